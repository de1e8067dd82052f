"""The Celery app that runs generation tasks: JSON only, late acks, one message prefetched at a time."""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery, current_app
from celery.signals import setup_logging, worker_init, worker_ready, worker_shutdown
from prometheus_client import start_http_server

from bridge.broker import use_shared_clients
from bridge.connections import UNAVAILABLE, close, redis_client, require_redis_version
from bridge.constants import GENERATE_TASK, GENERATION_QUEUE
from bridge.errors import RedisLayoutError, RedisVersionError
from bridge.layout import require_layout_version
from bridge.logs import configure_logging
from bridge.models import load_registry
from bridge.settings import Settings
from bridge.startup import freeze_startup_objects
from bridge.task_queue import SHARED_BACKEND, broker_ssl_options, broker_transport_options
from tasks import liveness, shutdown, tracing


def create_celery(settings: Settings) -> Celery:
    # A broken MODELS_FILE stops the worker at start rather than failing every generation later.
    load_registry(settings.models_file)
    use_shared_clients()
    app = Celery("tokenbridge", broker=settings.broker_url, include=["tasks.generation"])
    app.conf.update(
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        event_serializer="json",
        task_ignore_result=True,
        task_acks_late=True,
        # A generation that the worker loses is handled by its lease, not by Celery's redelivery.
        task_reject_on_worker_lost=False,
        worker_prefetch_multiplier=1,
        # Back on the broker within a second of it being reachable again (Celery waits 2, 4, 6 … s).
        worker_consumer="tasks.reconnect:Consumer",
        task_default_queue=GENERATION_QUEUE,
        task_routes={GENERATE_TASK: {"queue": GENERATION_QUEUE}},
        broker_connection_retry_on_startup=True,
        broker_transport_options=broker_transport_options(settings),
        # No result backend (task_ignore_result): the broker is the only Redis Celery connects to.
        **SHARED_BACKEND,
        **broker_ssl_options(settings),
        worker_hijack_root_logger=False,
        # Task events only while a monitor reads them: Flower turns them on (``enable_events``) every few seconds.
        # Three broker round trips per generation otherwise, that nothing reads.
        worker_send_task_events=False,
        # With REMAP_SIGTERM=SIGQUIT (the Procfile sets it), SIGTERM gives running generations this long to
        # finish, then hands them back: their lease is released and the message requeued (acks_late).
        worker_soft_shutdown_timeout=settings.celery_soft_shutdown_s,
        task_time_limit=settings.celery_time_limit_s,
        task_send_sent_event=settings.celery_sent_events,
        enable_utc=True,
    )
    app.conf.tokenbridge_settings = settings
    return app


def settings_of(app: Any) -> Settings:
    """The settings ``create_celery`` gave ``app`` (read once per process), or the environment's."""
    settings = getattr(getattr(app, "conf", None), "tokenbridge_settings", None)
    return settings if isinstance(settings, Settings) else Settings()


@worker_init.connect
def _check_redis_version(sender: Any = None, **_: Any) -> None:
    """Stop a worker started against a Redis older than tokenbridge needs, or holding another layout of keys
    (``bridge.layout``), before it takes any task."""
    settings = settings_of(getattr(sender, "app", None))
    try:
        client = redis_client(settings.redis, max_connections=4, client_name="tokenbridge-worker")
    except UNAVAILABLE as exc:  # a cluster client connects as it is made
        logging.getLogger(__name__).warning("Could not read the Redis version (%s).", exc)
        return
    try:
        require_redis_version(client)
        require_layout_version(client)
    except (RedisVersionError, RedisLayoutError) as exc:
        logging.getLogger(__name__).critical("%s", exc)
        # Celery logs and ignores a signal handler's Exception; SystemExit ends the worker.
        raise SystemExit(1) from exc
    finally:
        close(client)


@worker_init.connect
def _trace(**_: Any) -> None:
    tracing.instrument()


@worker_init.connect
def _serve_metrics(sender: Any = None, **_: Any) -> None:
    port = settings_of(getattr(sender, "app", None)).worker_metrics_port
    if port:
        start_http_server(port)


@worker_ready.connect
def _freeze_startup_objects(**_: Any) -> None:
    freeze_startup_objects()


@worker_ready.connect
def _soft_shutdown_under_gevent(sender: Any = None, **_: Any) -> None:
    # Celery installed its signal handlers before the consumer was ready (``install_platform_tweaks``).
    shutdown.run_shutdown_handlers_in_greenlets(settings_of(getattr(sender, "app", None)).celery_soft_shutdown_s)


@worker_ready.connect
def _start_heartbeat(sender: Any = None, **_: Any) -> None:
    liveness.start(settings_of(getattr(sender, "app", None)))


@worker_shutdown.connect
def _stop_heartbeat(**_: Any) -> None:
    liveness.stop()


@setup_logging.connect
def _configure_logging(**_: Any) -> None:
    settings = settings_of(current_app)
    configure_logging(settings.log_format, settings.log_level, process="worker")
    for problem in settings.order_problems():
        logging.getLogger(__name__).warning(problem)

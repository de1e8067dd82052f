"""``python -m workers``: one consumer worker, until SIGTERM."""

from __future__ import annotations

import logging

import redis
from celery import Celery
from prometheus_client import start_http_server

from bridge import tracing
from bridge.connections import redis_client, require_redis_version
from bridge.errors import RedisLayoutError, RedisVersionError
from bridge.layout import require_layout_version
from bridge.logs import configure_logging
from bridge.settings import Settings
from bridge.startup import freeze_startup_objects
from bridge.task_queue import celery_client_options, send_generation, waiting_tasks
from workers.celery_events import CeleryEvents
from workers.consumer import ConsumerWorker, default_consumer_name
from workers.metrics import MetricsPublisher
from workers.processors import default_processors


def main() -> None:
    settings = Settings()
    configure_logging(settings.log_format, settings.log_level, process="consumer")
    tracing.setup("consumer")
    # The socket timeout must outlast the longest blocking read.
    client = redis_client(settings.redis, socket_timeout_s=settings.consumer_block_ms / 1000 + 10)
    _refuse_an_incompatible_redis(client)
    celery = Celery("tokenbridge-supervisor", broker=settings.broker_url)
    celery.conf.update(celery_client_options(settings))
    name = settings.consumer_name or default_consumer_name()
    worker = ConsumerWorker(
        client,
        settings,
        default_processors(client, settings.processors, models_file=settings.models_file),
        name=name,
        enqueue=lambda gid: send_generation(celery, gid),
        waiting_tasks=lambda: waiting_tasks(celery),
        # Flower lists this process as the worker consumer@<name>, and its generations as tasks.
        events=CeleryEvents(celery, name) if settings.consumer_celery_events else None,
    )
    worker.install_signal_handlers()
    for problem in settings.order_problems():
        logging.getLogger(__name__).warning(problem)
    if settings.consumer_metrics_port:
        start_http_server(settings.consumer_metrics_port)
    # web's /metrics serves them too, for a deploy where this process's port cannot be scraped.
    publisher = MetricsPublisher(client, name)
    publisher.start()
    freeze_startup_objects()
    try:
        worker.run()
    finally:
        publisher.close()
        tracing.shutdown()


def _refuse_an_incompatible_redis(client: redis.Redis) -> None:
    """Stop at once, with one line that says why, on a Redis too old or holding another layout of keys."""
    try:
        require_redis_version(client)
        require_layout_version(client)
    except (RedisVersionError, RedisLayoutError) as exc:
        logging.getLogger(__name__).critical("%s", exc)
        raise SystemExit(1) from exc


if __name__ == "__main__":
    main()

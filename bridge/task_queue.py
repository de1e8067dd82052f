"""The generation task queue as every process sees it: the Celery options of an app that only sends, the
broker's transport (``bridge.broker``) and its options, and sending one generation task (no Celery import here:
``celery`` is passed in)."""

from __future__ import annotations

import ssl
import time
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from bridge import tracing
from bridge.broker import captured_messages, use_shared_clients
from bridge.constants import GENERATE_TASK, GENERATION_QUEUE
from bridge.settings import Settings

_CERT_REQS = {
    "none": ssl.CERT_NONE,
    "optional": ssl.CERT_OPTIONAL,
    "required": ssl.CERT_REQUIRED,
    "cert_none": ssl.CERT_NONE,
    "cert_optional": ssl.CERT_OPTIONAL,
    "cert_required": ssl.CERT_REQUIRED,
}
_SSL_PATHS = ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile")


# No result backend: Celery's stand-in (DisabledBackend) shared by every greenlet of a process. Unshared, each
# greenlet (a request in web, a task in the worker) builds its own, reading a dozen settings: some 190 µs each.
SHARED_BACKEND: dict[str, Any] = {"result_backend_thread_safe": True}


def celery_client_options(settings: Settings) -> dict[str, Any]:
    """Options of a Celery app that only sends generation tasks (web, consumer supervisor)."""
    use_shared_clients()
    return {
        "task_serializer": "json",
        "accept_content": ["json"],
        "task_ignore_result": True,
        **SHARED_BACKEND,
        "broker_connection_retry_on_startup": True,
        "broker_transport_options": broker_transport_options(settings),
        # Read by monitors only (Flower): off unless asked for, since it costs a broker round trip per generation.
        "task_send_sent_event": settings.celery_sent_events,
        **broker_ssl_options(settings),
    }


def broker_ssl_options(settings: Settings) -> dict[str, Any]:
    """``broker_use_ssl`` for a ``rediss://`` broker: the ``ssl_*`` parameters of its URL (``REDIS_SSL_CERT_REQS``
    included, see ``Settings.broker_url``), and the certificate verified when nothing says otherwise, as redis-py
    does for the streams. Without it kombu accepts any certificate, and Flower's broker view (which reads only
    ``broker_use_ssl``, never the URL) refuses a self-signed one."""
    parsed = urlsplit(settings.broker_url)
    if parsed.scheme != "rediss":
        return {}
    query = dict(parse_qsl(parsed.query))
    cert_reqs = query.get("ssl_cert_reqs", "required").lower()
    if cert_reqs not in _CERT_REQS:
        raise ValueError(f"CELERY_BROKER_URL: ssl_cert_reqs={cert_reqs!r} is not none, optional or required")
    options: dict[str, Any] = {"ssl_cert_reqs": _CERT_REQS[cert_reqs]}
    options.update((name, query[name]) for name in _SSL_PATHS if query.get(name))
    return {"broker_use_ssl": options}


def broker_transport_options(settings: Settings) -> dict[str, Any]:
    """Redis broker: when an unacknowledged task is delivered again, and how often that is checked."""
    return {
        "visibility_timeout": settings.celery_visibility_timeout_s,
        "unacked_restore_interval": settings.celery_restore_interval_s,
        "unacked_restore_throttle": 1,
        # kombu's default of 10 Redis connections is exhausted by a gevent pool acking hundreds of tasks
        # ("Connection to broker lost … MaxConnectionsError"). REDIS_MAX_CONNECTIONS does not apply: this pool
        # fails instead of waiting ("Couldn't ack … MaxConnectionsError"), and opens connections only as acks
        # overlap. Celery's pool of connections that send (broker_pool_limit, 10) stays too: Flower's inspect
        # calls stall on a smaller one.
        "max_connections": 1024,
        **sentinel_transport_options(settings),
    }


def sentinel_transport_options(settings: Settings) -> dict[str, Any]:
    """With a ``sentinel://`` broker: the master's name and the sentinels' own password."""
    if not settings.broker_url.startswith("sentinel://"):
        return {}
    target = settings.redis
    options: dict[str, Any] = {"master_name": target.sentinel_master}
    if target.sentinel_password:
        options["sentinel_kwargs"] = {"password": target.sentinel_password}
    return options


# A task header: when the task was sent (UNIX s), sent only while tracing, for the worker's queue-wait span.
SENT_AT_HEADER = "tokenbridge_sent_at"


def send_generation(celery: Any, generation_id: str) -> None:
    """Enqueue the generation task; raises the broker's error when it cannot."""
    traced = {"headers": {SENT_AT_HEADER: time.time()}} if tracing.enabled() else {}
    celery.send_task(
        GENERATE_TASK,
        args=[generation_id],
        queue=GENERATION_QUEUE,
        retry=True,
        retry_policy={"max_retries": 2, "interval_start": 0, "interval_step": 0.2, "interval_max": 0.5},
        **traced,
    )


def prepared_generation_task(celery: Any, generation_id: str) -> tuple[str, bytes]:
    """The generation task as ``send_generation`` would send it to a Redis broker (Celery's publish signals, task
    headers and sent event included), but not pushed: the broker queue's key and the message, for a script that
    stores the generation to push in the same round trip. Only for a broker on the Redis of the streams."""
    with captured_messages() as messages:
        send_generation(celery, generation_id)
    if len(messages) != 1:
        raise RuntimeError(f"publishing the task of {generation_id} gave {len(messages)} messages, not one")
    return messages[0]


def waiting_tasks(celery: Any) -> int:
    """How many generation tasks wait in the broker's queue, not yet taken by a worker (one ``LLEN`` on a Redis
    broker, a passive declare on RabbitMQ). A Redis queue with nothing in it is no key at all: 0."""
    with celery.pool.acquire(block=True, timeout=5) as connection:
        try:
            declared = connection.default_channel.queue_declare(GENERATION_QUEUE, passive=True)
        except connection.channel_errors:
            return 0
        return int(declared.message_count)

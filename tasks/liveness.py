"""The Celery worker's proof of life (``bridge.liveness``): its name in ``llm:workers``, stamped by a thread (a
greenlet under the gevent pool) from ``worker_ready`` until the worker shuts down. Each attempt the worker claims
names it, so that the consumers start a new attempt within seconds of its death rather than at its lease's end."""

from __future__ import annotations

import os
import socket

from bridge import keys
from bridge.connections import redis_client
from bridge.liveness import Heartbeat
from bridge.settings import Settings

# This process, as its attempts and its heartbeat name it.
NAME = f"{socket.gethostname()}-{os.getpid()}"

_heartbeat: Heartbeat | None = None


def start(settings: Settings) -> None:
    global _heartbeat
    if _heartbeat is not None:
        return
    client = redis_client(settings.redis, max_connections=2, client_name="tokenbridge-worker-heartbeat")
    _heartbeat = Heartbeat(client, keys.WORKERS_ZSET, NAME, dead_after_ms=settings.dead_after_ms)
    _heartbeat.start()


def stop() -> None:
    """At a clean shutdown: stop stamping and strike the name off (its attempts were finished or handed back)."""
    global _heartbeat
    if _heartbeat is not None:
        _heartbeat.stop(withdraw=True)
        _heartbeat = None

"""kombu's Redis transport with one client per channel for its commands.

kombu builds a new ``redis.Redis`` for every command it sends outside its event loop (``Channel.conn_or_acquire``):
each task published, each message taken into the unacknowledged set, each acknowledgement. redis-py 8 takes some
190 µs to build one (it copies its response callbacks and checks its arguments): 80 builds for 20 tasks, about
0.3 ms of the worker's CPU per generation. A client shares its connection pool and is safe to share between
threads and greenlets (each command takes a connection from the pool), so a channel keeps one, built again only
when kombu replaces the channel's pool (after a connection error). The clients of kombu's event loop (``BRPOP``,
the fanout subscription) are built as before.

Every process that talks to a Redis broker calls ``use_shared_clients`` when it configures Celery.

``captured_messages`` lets a caller that shares the broker's Redis take what a publish would push onto a queue
instead of pushing it, to push it in a script of its own: ``web`` stores a generation and enqueues its task in one
round trip (``bridge.task_queue.prepared_generation_task``).
"""

from __future__ import annotations

import contextlib
import contextvars
import time
from collections.abc import Iterator
from typing import Any

import kombu.transport
import redis
from kombu.transport import redis as kombu_redis
from kombu.utils import functional as kombu_functional
from kombu.utils import json as kombu_json

# While set (per greenlet or thread: each has its own context), what ``_put`` would push: (queue key, message).
_captured: contextvars.ContextVar[list[tuple[str, bytes]] | None] = contextvars.ContextVar("captured", default=None)


@contextlib.contextmanager
def captured_messages() -> Iterator[list[tuple[str, bytes]]]:
    """Within it, a message published to a queue of a Redis broker is not pushed: ``(key, payload)`` is added to the
    list it gives, the key and the bytes kombu would have ``LPUSH``ed, for the caller to push itself."""
    messages: list[tuple[str, bytes]] = []
    token = _captured.set(messages)
    try:
        yield messages
    finally:
        _captured.reset(token)


class _SharedClient:
    """``Channel._create_client`` returning one client per channel and pool (the synchronous one)."""

    _shared_client: redis.Redis | None = None

    def _create_client(self, asynchronous: bool = False) -> Any:
        if asynchronous:
            return super()._create_client(asynchronous=True)  # type: ignore[misc]
        shared = self._shared_client
        if shared is None or shared.connection_pool is not self.pool:  # type: ignore[attr-defined]
            shared = self._shared_client = super()._create_client()  # type: ignore[misc]
        return shared

    def _put(self, queue: str, message: dict[str, Any], **kwargs: Any) -> None:
        captured = _captured.get()
        if captured is None:
            super()._put(queue, message, **kwargs)  # type: ignore[misc]
            return
        if kwargs.get("_publish_batch") is not None or queue in (self._expires or {}):  # type: ignore[attr-defined]
            raise RuntimeError(f"a message to {queue!r} cannot be captured: it is batched or its queue expires")
        priority = self._get_message_priority(message, reverse=False)  # type: ignore[attr-defined]
        key = self._q_for_pri(queue, priority)  # type: ignore[attr-defined]
        captured.append((key, kombu_json.dumps(message).encode()))


class Channel(_SharedClient, kombu_redis.Channel):
    pass


class SentinelChannel(_SharedClient, kombu_redis.SentinelChannel):
    pass


class Transport(kombu_redis.Transport):
    Channel = Channel


class SentinelTransport(kombu_redis.SentinelTransport):
    Channel = SentinelChannel


_TRANSPORTS = {
    "redis": f"{__name__}:Transport",
    "rediss": f"{__name__}:Transport",
    "sentinel": f"{__name__}:SentinelTransport",
}


def use_shared_clients() -> None:
    """Make these kombu's transports for ``redis://``, ``rediss://`` and ``sentinel://`` brokers in this process
    (kombu's table of transport aliases), before any connection is made. By alias rather than Celery's
    ``broker_transport``: a connection still calls itself ``redis://…`` (Flower reads the scheme of
    ``Connection.as_uri`` to show the broker's queues). Other brokers (RabbitMQ's ``amqp://``) are left alone."""
    kombu.transport.TRANSPORT_ALIASES.update(_TRANSPORTS)
    resolved: dict[str, Any] = getattr(kombu.transport, "_transport_cache", {})
    for alias in _TRANSPORTS:  # kombu keeps each alias's class once resolved
        resolved.pop(alias, None)
    cooperative_retry_waits()


def cooperative_retry_waits() -> None:
    """Make kombu's retry waits (``retry_over_time``: Celery's "Trying again in 2.00 seconds…" while it reconnects to
    its broker) yield to the other greenlets under gevent, as ``time.sleep`` does once patched.

    gevent's ``patch_all`` patches threading before time, and while it looks for existing locks it touches
    Celery's lazy proxies, which import kombu: ``kombu.utils.functional`` then holds the blocking ``time.sleep``.
    Every wait for the broker froze the whole worker (no token written by any generation for 2, then 4, 6 … s
    after a Redis failover). A no-op where time is not patched.
    """
    if getattr(kombu_functional, "sleep", time.sleep) is not time.sleep:
        setattr(kombu_functional, "sleep", time.sleep)  # noqa: B010 (the stubs do not name it)

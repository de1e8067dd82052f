"""Redis client factory: one place that turns settings into a client."""

from __future__ import annotations

import redis

from bridge.settings import Settings


def redis_client(
    settings: Settings,
    *,
    socket_timeout_s: float | None = 10.0,
    max_connections: int = 64,
    pool_timeout_s: float = 5.0,
    single_connection: bool = False,
    client_name: str = "tokenbridge",
) -> redis.Redis:
    """A client on ``settings``' Redis with string replies and bounded waits.

    The pool is bounded and blocking: a caller waits up to ``pool_timeout_s`` for a free connection instead
    of opening more. ``socket_timeout_s`` must exceed the longest ``BLOCK`` a caller uses on this client.
    """
    pool = redis.BlockingConnectionPool.from_url(
        settings.resolved_redis_url,
        decode_responses=True,
        socket_connect_timeout=5.0,
        socket_timeout=socket_timeout_s,
        socket_keepalive=True,
        health_check_interval=30,
        max_connections=max_connections,
        timeout=pool_timeout_s,
        client_name=client_name,
    )
    return redis.Redis(connection_pool=pool, single_connection_client=single_connection)

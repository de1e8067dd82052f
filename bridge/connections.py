"""Redis client factory: one place that turns settings into a client."""

from __future__ import annotations

from typing import Any, cast

import redis
from redis.connection import parse_url
from redis.sentinel import Sentinel, SentinelConnectionPool

from bridge.settings import Settings

# Errors that mean "Redis cannot answer now" (retry later), on a single Redis and on a cluster: a cluster
# client that reaches no node raises RedisClusterException, one whose slot has no master ClusterDownError.
UNAVAILABLE: tuple[type[Exception], ...] = (
    redis.ConnectionError,
    redis.TimeoutError,
    redis.exceptions.ClusterDownError,
    redis.exceptions.SlotNotCoveredError,
    redis.exceptions.RedisClusterException,
)


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
    On a Redis Cluster (``REDIS_CLUSTER``) the result is a ``RedisCluster`` that routes each command to the
    node of its key's slot, with the same bounded, blocking pool per node; it answers the same commands for
    the keys tokenbridge uses, so callers treat it as a ``redis.Redis``.
    ``REDIS_MAX_CONNECTIONS``, when set, replaces ``max_connections``: every process honours one limit.
    A ``rediss://`` URL is TLS; ``?ssl_cert_reqs=none`` accepts a managed Redis' self-signed certificate.
    """
    if settings.redis_max_connections:
        max_connections = settings.redis_max_connections
    options = {
        "decode_responses": True,
        "socket_connect_timeout": 5.0,
        "socket_timeout": socket_timeout_s,
        "socket_keepalive": True,
        "health_check_interval": 30,
        "max_connections": max_connections,
        "timeout": pool_timeout_s,
        "client_name": client_name,
    }
    if settings.redis_cluster:
        cluster = redis.RedisCluster.from_url(
            settings.resolved_redis_url, connection_pool_class=redis.BlockingConnectionPool, **options
        )
        return cast(redis.Redis, cluster)
    if settings.sentinel_addresses:
        return _sentinel_master(settings, options, single_connection=single_connection)
    pool = redis.BlockingConnectionPool.from_url(settings.resolved_redis_url, **options)
    return redis.Redis(connection_pool=pool, single_connection_client=single_connection)


class SentinelBlockingConnectionPool(SentinelConnectionPool, redis.BlockingConnectionPool):
    """The sentinels' pool (asks them for the master at each new connection, drops those to a demoted one),
    bounded and blocking like the pool of a single Redis."""


def _sentinel_master(settings: Settings, options: dict[str, Any], *, single_connection: bool) -> redis.Redis:
    """A client of the master that ``REDIS_SENTINELS`` name, which follows its promotion.

    A new connection asks the sentinels where the master is; one that meets a demoted master (READONLY) is
    dropped with a ``ConnectionError``, which callers already treat as Redis being briefly unavailable.
    """
    master: dict[str, Any] = parse_url(settings.resolved_redis_url)  # type: ignore[no-untyped-call]
    for unused in ("host", "port", "path"):
        master.pop(unused, None)
    if master.pop("connection_class", None) is redis.SSLConnection:
        master["ssl"] = True
    sentinel_options: dict[str, Any] = {
        "socket_connect_timeout": options["socket_connect_timeout"],
        "socket_timeout": 5.0,
        "socket_keepalive": True,
    }
    if settings.redis_sentinel_password:
        sentinel_options["password"] = settings.redis_sentinel_password
    sentinel = Sentinel(settings.sentinel_addresses, sentinel_kwargs=sentinel_options)  # type: ignore[no-untyped-call]
    client = sentinel.master_for(  # type: ignore[no-untyped-call]
        settings.redis_sentinel_master,
        connection_pool_class=SentinelBlockingConnectionPool,
        **master,
        **options,
    )
    if single_connection:
        return redis.Redis(connection_pool=client.connection_pool, single_connection_client=True)
    return cast(redis.Redis, client)


def is_cluster(client: object) -> bool:
    """True for a ``RedisCluster`` client or one of its pipelines."""
    return isinstance(client, redis.RedisCluster)


def close(client: redis.Redis) -> None:
    """Close ``client`` and its connections (a cluster client's close leaves its nodes' pools connected)."""
    client.close()
    if isinstance(client, redis.RedisCluster):
        for node in client.get_nodes():
            if node.redis_connection is not None:
                node.redis_connection.connection_pool.disconnect()

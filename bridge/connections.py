"""Redis client factory: one place that turns the Redis settings (a ``RedisTarget``) into a client."""

from __future__ import annotations

import logging
import re
import time
from typing import Any, cast

import redis
from redis.connection import parse_url
from redis.sentinel import Sentinel, SentinelConnectionPool

from bridge.errors import RedisVersionError
from bridge.settings.redis import RedisTarget

logger = logging.getLogger(__name__)

# The oldest Redis tokenbridge runs on: XAUTOCLAIM (a consumer taking over an idle one's generations) and GETDEL
# (dead-letter decisions) came with 6.2. web, worker and consumer check it at start (``require_redis_version``).
MIN_REDIS_VERSION = (6, 2)

# Errors that mean "Redis cannot answer now" (retry later), on a single Redis and on a cluster: a cluster
# client that reaches no node raises RedisClusterException, one whose slot has no master ClusterDownError.
UNAVAILABLE: tuple[type[Exception], ...] = (
    redis.ConnectionError,
    redis.TimeoutError,
    redis.exceptions.ClusterDownError,
    redis.exceptions.SlotNotCoveredError,
    redis.exceptions.RedisClusterException,
)

# Longest wait between two tries of the stream store while it cannot answer, in every loop that writes or reads
# tokens (worker, consumer, web's hub): each resumes within this of Redis answering again (after a failover, the
# promotion). A try costs one refused connection, or one question to the sentinels. The three loops wait in turn
# for a token to reach a reader: after a Sentinel failover tokens flowed again 0.01-0.38 s after the promotion
# with 0.2 s (7 runs of tests/faults/test_failover.py), 1.4-1.9 s with 0.5 s (3 runs).
UNAVAILABLE_RETRY_MAX_S = 0.2


class Outage:
    """The waits of one loop while Redis (or the broker) cannot answer, and what it logs of them: the wait doubles
    from ``first_s`` up to ``max_s`` (``UNAVAILABLE_RETRY_MAX_S`` by default); a warning per growing wait, then one
    for all the tries at the longest; and one line when it answers again, saying how long it did not (once per
    outage). Every loop that waits out an outage uses one."""

    def __init__(
        self,
        log: logging.Logger,
        failed: str,
        answered: str,
        *,
        first_s: float = 0.1,
        max_s: float = UNAVAILABLE_RETRY_MAX_S,
        extra: dict[str, str] | None = None,
    ) -> None:
        self.log = log
        self.extra = extra  # the log records' extra fields (a generation's id)
        self.failed_text = failed  # "Hub read failed": "<failed> (<error>); retrying in 0.2s."
        self.answered_text = answered  # "Hub reads again": "<answered> after 2.4 s (13 tries)."
        self.first_s = first_s
        self.max_s = max_s
        self.wait_s = first_s
        self.tries = 0
        self.since = 0.0
        self._quiet = False

    def failed(self, error: BaseException) -> float:
        """Note a failed try; returns how long to wait before the next."""
        if not self.tries:
            self.since = time.monotonic()
        self.tries += 1
        wait_s = self.wait_s
        at_longest = wait_s >= self.max_s
        if not (at_longest and self._quiet):
            then = ", then as often until it answers" if at_longest else ""
            self.log.warning("%s (%s); retrying in %.2gs%s.", self.failed_text, error, wait_s, then, extra=self.extra)
        self._quiet = at_longest
        self.wait_s = min(wait_s * 2, self.max_s)
        return wait_s

    def gives_up(self, within_s: float, now: float | None = None) -> bool:
        """Whether the next wait would end past ``within_s`` from the outage's first failed try (or from now)."""
        now = time.monotonic() if now is None else now
        return now + self.wait_s > (self.since if self.tries else now) + within_s

    def answered(self) -> None:
        """Redis answered: the outage, if there was one, is over (nothing to do otherwise: every write calls it)."""
        if not self.tries:
            return
        outage_s = time.monotonic() - self.since
        self.log.info("%s after %.1f s (%d tries).", self.answered_text, outage_s, self.tries, extra=self.extra)
        self.wait_s, self.tries, self._quiet = self.first_s, 0, False


# Redis down now, or an ACL user without INFO: the version cannot be told.
_VERSION_UNREADABLE: tuple[type[Exception], ...] = (*UNAVAILABLE, redis.ResponseError)


def redis_client(
    target: RedisTarget,
    *,
    socket_timeout_s: float | None = 10.0,
    max_connections: int = 64,
    pool_timeout_s: float = 5.0,
    single_connection: bool = False,
    client_name: str = "tokenbridge",
) -> redis.Redis:
    """A client on ``target`` (``settings.redis``) with string replies and bounded waits.

    The pool is bounded and blocking: a caller waits up to ``pool_timeout_s`` for a free connection instead
    of opening more. ``socket_timeout_s`` must exceed the longest ``BLOCK`` a caller uses on this client.
    On a Redis Cluster (``REDIS_CLUSTER``) the result is a ``RedisCluster`` that routes each command to the
    node of its key's slot, with the same bounded, blocking pool per node; it answers the same commands for
    the keys tokenbridge uses, so callers treat it as a ``redis.Redis``.
    ``REDIS_MAX_CONNECTIONS``, when set, replaces ``max_connections``: every process honours one limit.
    A ``rediss://`` URL is TLS; ``?ssl_cert_reqs=none`` accepts a managed Redis' self-signed certificate.
    """
    if target.max_connections:
        max_connections = target.max_connections
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
    if target.cluster:
        cluster = redis.RedisCluster.from_url(target.url, connection_pool_class=redis.BlockingConnectionPool, **options)
        return cast(redis.Redis, cluster)
    if target.sentinels:
        return _sentinel_master(target, options, single_connection=single_connection)
    pool = redis.BlockingConnectionPool.from_url(target.url, **options)
    return redis.Redis(connection_pool=pool, single_connection_client=single_connection)


class SentinelBlockingConnectionPool(SentinelConnectionPool, redis.BlockingConnectionPool):
    """The sentinels' pool (asks them for the master at each new connection, drops those to a demoted one),
    bounded and blocking like the pool of a single Redis."""


def _sentinel_master(target: RedisTarget, options: dict[str, Any], *, single_connection: bool) -> redis.Redis:
    """A client of the master that ``REDIS_SENTINELS`` name, which follows its promotion.

    A new connection asks the sentinels where the master is; one that meets a demoted master (READONLY) is
    dropped with a ``ConnectionError``, which callers already treat as Redis being briefly unavailable.
    """
    master: dict[str, Any] = parse_url(target.url)  # type: ignore[no-untyped-call]
    for unused in ("host", "port", "path"):
        master.pop(unused, None)
    if master.pop("connection_class", None) is redis.SSLConnection:
        master["ssl"] = True
    sentinel_options: dict[str, Any] = {
        "socket_connect_timeout": options["socket_connect_timeout"],
        "socket_timeout": 5.0,
        "socket_keepalive": True,
    }
    if target.sentinel_password:
        sentinel_options["password"] = target.sentinel_password
    sentinel = Sentinel(list(target.sentinels), sentinel_kwargs=sentinel_options)  # type: ignore[no-untyped-call]
    client = sentinel.master_for(  # type: ignore[no-untyped-call]
        target.sentinel_master,
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


def require_redis_version(client: redis.Redis) -> None:
    """Refuse a Redis older than ``MIN_REDIS_VERSION`` (``INFO server``, on every node of a cluster).

    Raises RedisVersionError naming the version found. When Redis cannot be reached now, or refuses ``INFO``
    (an ACL user without it), the version cannot be told: a warning is logged and the process goes on.
    """
    needed = ".".join(map(str, MIN_REDIS_VERSION))
    try:
        versions = _server_versions(client)
    except _VERSION_UNREADABLE as exc:
        logger.warning("Could not read the Redis version (%s); tokenbridge needs Redis %s or newer.", exc, needed)
        return
    for node, version in versions.items():
        numbers = tuple(int(part) for part in re.findall(r"\d+", version)[:2])
        if numbers < MIN_REDIS_VERSION:
            raise RedisVersionError(
                f"Redis {node} is version {version}; tokenbridge needs Redis {needed} or newer "
                "(for XAUTOCLAIM). Upgrade Redis, or point REDIS_URL at a newer one."
            )


def _server_versions(client: redis.Redis) -> dict[str, str]:
    """``redis_version`` of ``INFO server`` by node: each node of a cluster, else the one Redis."""
    if isinstance(client, redis.RedisCluster):
        return {
            node.name: str(client.info("server", target_nodes=node)["redis_version"]) for node in client.get_nodes()
        }
    pool = client.connection_pool
    if isinstance(pool, SentinelConnectionPool):
        where = f"(the Sentinel master {pool.service_name})"
    else:
        kwargs = pool.connection_kwargs
        where = str(kwargs.get("path") or f"{kwargs.get('host', 'localhost')}:{kwargs.get('port', 6379)}")
    return {where: str(client.info("server")["redis_version"])}

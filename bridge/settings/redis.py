"""Settings of Redis (streams and state) and of Celery's broker: where they are, and how tokenbridge talks to them."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Literal
from urllib.parse import parse_qsl, quote, urlsplit

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


@dataclass(frozen=True)
class RedisTarget:
    """Everything needed to reach the Redis of streams and state, resolved once from the settings
    (``Settings.redis``) and taken by whatever builds a client of it (``bridge.connections.redis_client``)."""

    # REDIS_URL, or one built from REDIS_HOST/PORT/PASSWORD/DB; REDIS_SSL_CERT_REQS applied to a rediss:// URL.
    # Kept out of the repr, as the sentinels' password is: either may hold a password.
    url: str = field(repr=False)
    cluster: bool = False
    # Sentinels as (host, port); empty without Sentinel. With them, ``url``'s host and port are ignored.
    sentinels: tuple[tuple[str, int], ...] = ()
    sentinel_master: str = "mymaster"
    sentinel_password: str | None = field(default=None, repr=False)
    # REDIS_MAX_CONNECTIONS: replaces each pool's own size when set.
    max_connections: int | None = None

    @property
    def rate_limit_storage(self) -> tuple[str, dict[str, object]]:
        """Flask-Limiter's storage URI and options: this Redis (its cluster client on a cluster)."""
        options: dict[str, object] = {}
        if self.max_connections:
            options["max_connections"] = self.max_connections
        if not self.cluster:
            return self.url, options
        parsed = urlsplit(self.url)
        if parsed.scheme == "rediss":
            options["ssl"] = True
            # The cluster URI loses the query, so a managed Redis' `?ssl_cert_reqs=none` is carried over here.
            cert_reqs = dict(parse_qsl(parsed.query)).get("ssl_cert_reqs")
            if cert_reqs:
                options["ssl_cert_reqs"] = cert_reqs
        return f"redis+cluster://{parsed.netloc}", options


class RedisSettings(BaseSettings):
    """Redis and the broker (``REDIS_*``, ``CELERY_BROKER_URL``)."""

    # A validation error names the variable, never its value (which may be a password or a key).
    model_config = SettingsConfigDict(env_prefix="", case_sensitive=False, extra="ignore", hide_input_in_errors=True)

    # Redis for streams and state; seed-compatible REDIS_HOST/PORT/PASSWORD/DB when REDIS_URL is unset.
    redis_url: str | None = Field(
        default=None,
        description="Redis for streams and state: `redis://`, `rediss://` (TLS) or `unix://`. When unset, "
        "`REDIS_HOST`, `REDIS_PORT`, `REDIS_PASSWORD` and `REDIS_DB` are used.",
    )
    redis_host: str = Field(
        default="localhost",
        description="Redis host when `REDIS_URL` is unset.",
    )
    redis_port: int = Field(
        default=6379,
        description="Redis port when `REDIS_URL` is unset.",
    )
    redis_password: str | None = Field(
        default=None,
        description="Redis password when `REDIS_URL` is unset.",
    )
    redis_db: int = Field(
        default=0,
        description="Redis database number when `REDIS_URL` is unset.",
    )
    redis_ssl_cert_reqs: Literal["none", "optional", "required"] | None = Field(
        default=None,
        description="Added to a `rediss://` Redis URL that has no `ssl_cert_reqs` of its own, `REDIS_URL` and "
        "`CELERY_BROKER_URL` alike: `none` accepts the self-signed certificate of a managed Redis (Heroku Data for "
        "Redis) whose add-on sets the URL. Every process applies it, Celery's broker connections and Flower's "
        "included.",
    )
    # Bounds each pool, not the process: see docs/deploy.md for the count per process.
    redis_max_connections: int | None = Field(
        default=None,
        ge=4,
        description="Connections of the Redis pool of each `web`, `worker` and `consumer` process (the `web`'s "
        "rate limiter shares it), for managed Redis plans with few connections: a caller waits for a free one "
        "instead of opening more. Unset: 64 for `web` and `consumer`, 256 for `worker`. Celery's own broker "
        "connections come on top (see [deploy.md](deploy.md)).",
    )
    # REDIS_URL names one node of a Redis Cluster (any node: the others are discovered).
    redis_cluster: bool = Field(
        default=False,
        description="`1`/`true`: `REDIS_URL` names a node of a Redis Cluster (any node; the others are discovered). "
        "Needs `CELERY_BROKER_URL`. See [SCALING.md](SCALING.md).",
    )
    # Shards of the work stream; default 1 on a single Redis, 16 on a cluster (spread over its slots).
    work_shards: int | None = Field(
        default=None,
        ge=1,
        le=1024,
        description="Shards of the work stream (`llm:work`, or `llm:work:{tag}` each), spread over the cluster's "
        "slots. Default 1, or 16 with `REDIS_CLUSTER`. Every process must use the same value.",
    )
    # Sentinel: every process asks the sentinels for the master and follows its promotion (bridge/connections.py).
    redis_sentinels: str = Field(
        default="",
        description="Comma-separated `host:port` of Redis Sentinels. When set, every process (`web`, `worker`, "
        "`consumer`, `flower`) asks them for the master `REDIS_SENTINEL_MASTER` and follows a failover on its own; "
        "the user, password and database of `REDIS_URL` (or `REDIS_PASSWORD`, `REDIS_DB`) apply to the master, its "
        "host and port are ignored. Celery's broker follows the same master (`sentinel://`) unless "
        "`CELERY_BROKER_URL` is set. See [RELIABILITY.md](RELIABILITY.md#redis-failover).",
    )
    redis_sentinel_master: str = Field(
        default="mymaster",
        description="Name of the master the sentinels watch (`sentinel monitor <name> …`).",
    )
    redis_sentinel_password: str | None = Field(
        default=None,
        description="Password of the sentinels themselves (`requirepass` in sentinel.conf), when they have one.",
    )
    redis_wait_replicas: int = Field(
        default=0,
        ge=0,
        description="Replicas that must confirm a new generation before `POST` answers it (`WAIT`, at most "
        "`REDIS_WAIT_TIMEOUT_MS`; once per submission, never per token). 0: no wait. Set it to 1 with a replicated "
        "Redis so that a failover cannot lose an accepted generation; what it can lose of a running or ended one, "
        "and how that is bounded: [RELIABILITY.md](RELIABILITY.md#redis-failover).",
    )
    redis_wait_timeout_ms: int = Field(
        default=200,
        ge=1,
        description="Longest `WAIT` for `REDIS_WAIT_REPLICAS`, in ms. When it runs out the write stands, unconfirmed, "
        "and a warning is logged (once, until replicas confirm again): a lost replica slows writes, never stops "
        "them.",
    )
    redis_memory_headroom: float = Field(
        default=0.9,
        gt=0,
        le=1,
        description="Fraction of Redis' `maxmemory` above which new generations get 503 `redis_out_of_memory`, so "
        "that running ones keep room to finish. Read from `INFO memory` at most once a second per `web` process; "
        "1 refuses only once Redis itself does. No effect without `maxmemory`.",
    )
    celery_broker_url: str | None = Field(
        default=None,
        description="Celery broker (Redis, or RabbitMQ `amqp://`); default the Redis URL. `web` and `consumer` send "
        "tasks to it, `worker` takes them from it. Required with `REDIS_CLUSTER`. On the Redis of the streams (the "
        "default), `web` pushes a generation's task in the script that stores it: one round trip per submission.",
    )

    @cached_property
    def sentinel_addresses(self) -> list[tuple[str, int]]:
        """``REDIS_SENTINELS`` as (host, port) pairs; empty without Sentinel."""
        addresses = []
        for item in self.redis_sentinels.split(","):
            host, sep, port = item.strip().rpartition(":")
            if not item.strip():
                continue
            if not sep or not host or not port.isdigit():
                raise ValueError(f"REDIS_SENTINELS: {item.strip()!r} is not host:port")
            addresses.append((host.strip("[]"), int(port)))
        return addresses

    @property
    def work_shard_count(self) -> int:
        if self.work_shards is not None:
            return self.work_shards
        return 16 if self.redis_cluster else 1

    @cached_property
    def resolved_redis_url(self) -> str:
        """REDIS_URL, or one built from REDIS_HOST/REDIS_PORT/REDIS_PASSWORD/REDIS_DB."""
        if self.redis_url:
            return self._with_cert_reqs(self.redis_url)
        auth = f":{quote(self.redis_password, safe='')}@" if self.redis_password else ""
        return f"redis://{auth}{self.redis_host}:{self.redis_port}/{self.redis_db}"

    def _with_cert_reqs(self, url: str) -> str:
        """``url`` with ``REDIS_SSL_CERT_REQS`` added, when it is a ``rediss://`` URL without ``ssl_cert_reqs``."""
        if self.redis_ssl_cert_reqs and url.startswith("rediss://") and "ssl_cert_reqs=" not in url:
            url += f"{'&' if '?' in url else '?'}ssl_cert_reqs={self.redis_ssl_cert_reqs}"
        return url

    @cached_property
    def redis(self) -> RedisTarget:
        """The Redis of streams and state, as every client of it is built."""
        return RedisTarget(
            url=self.resolved_redis_url,
            cluster=self.redis_cluster,
            sentinels=tuple(self.sentinel_addresses),
            sentinel_master=self.redis_sentinel_master,
            sentinel_password=self.redis_sentinel_password,
            max_connections=self.redis_max_connections,
        )

    @property
    def broker_is_streams_redis(self) -> bool:
        """Whether Celery's broker is the database of the streams (no CELERY_BROKER_URL, or the same URL), not on a
        cluster: a generation's task is then pushed by the script that stores it (``streams.submit``)."""
        same = not self.celery_broker_url or self._with_cert_reqs(self.celery_broker_url) == self.redis.url
        return same and not self.redis.cluster

    @cached_property
    def broker_url(self) -> str:
        if self.celery_broker_url:
            # A second Redis over TLS (CELERY_BROKER_URL=rediss://…) is usually the same kind of managed Redis.
            return self._with_cert_reqs(self.celery_broker_url)
        target = self.redis
        if target.sentinels:
            # kombu's Sentinel transport: one `sentinel://` URL per sentinel joined by `;`, each carrying the
            # master's credentials and database; the master's name comes in the transport options.
            parsed = urlsplit(target.url)
            auth = parsed.netloc.rpartition("@")[0]
            auth = f"{auth}@" if auth else ""
            db = parsed.path.lstrip("/") or "0"
            return ";".join(f"sentinel://{auth}{host}:{port}/{db}" for host, port in target.sentinels)
        return target.url

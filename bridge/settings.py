"""Every setting of tokenbridge, read once from the environment by each entry point."""

from __future__ import annotations

from functools import cached_property
from typing import Literal
from urllib.parse import quote, urlsplit

from pydantic import Field, PrivateAttr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Configuration shared by web, worker and consumer. Field names map to upper-case environment variables."""

    model_config = SettingsConfigDict(env_prefix="", case_sensitive=False, extra="ignore")

    # Redis for streams and state; seed-compatible REDIS_HOST/PORT/PASSWORD/DB when REDIS_URL is unset.
    redis_url: str | None = None
    redis_host: str = "localhost"
    redis_port: int = 6379
    redis_password: str | None = None
    redis_db: int = 0
    # REDIS_URL names one node of a Redis Cluster (any node: the others are discovered).
    redis_cluster: bool = False
    # Shards of the work stream; default 1 on a single Redis, 16 on a cluster (spread over its slots).
    work_shards: int | None = Field(default=None, ge=1, le=1024)
    celery_broker_url: str | None = None

    port: int = 8000
    api_keys: str = ""
    # TOML file of [[keys]] (name, key or key_sha256, owner, scope), read again when it changes.
    api_keys_file: str | None = None
    # name=scope pairs for the keys of API_KEYS (scopes: full, reader, producer, admin; default full).
    api_key_scopes: str = ""
    auth_disabled: bool = False
    secret_key: str | None = None
    stream_token_ttl_s: int = Field(default=3600, ge=1)

    redis_stream_max_length: int = Field(default=100_000, ge=10)
    redis_stream_retention_ms: int = Field(default=86_400_000, ge=1000)
    redis_consumer_group: str = "llm:processors"
    log_format: Literal["json", "text"] = "json"
    log_level: str = "INFO"
    models_file: str | None = None

    # web
    sse_keepalive_s: float = Field(default=15.0, gt=0, le=15.0)
    sse_send_timeout_s: float = Field(default=30.0, gt=0)
    stream_max_duration_s: float = Field(default=3600.0, gt=0)
    hub_block_ms: int = Field(default=5000, ge=10)
    # How often each web process publishes its reader counts (a dead process stops counting after 3 of these).
    presence_interval_s: float = Field(default=2.0, gt=0, le=60)
    hub_read_count: int = Field(default=1000, ge=1)
    client_queue_size: int = Field(default=1024, ge=8)
    max_body_bytes: int = Field(default=1_048_576, ge=1024)
    max_tokens_limit: int = Field(default=32_768, ge=1)
    redis_retry_after_s: int = Field(default=2, ge=1)
    rate_limit: str = "600/minute"
    max_running_per_key: int = Field(default=100, ge=0)
    cors_origins: str = ""
    flower_url: str = ""
    idempotency_ttl_s: int = Field(default=86_400, ge=1)
    ready_max_redis_latency_ms: float = Field(default=100.0, gt=0)
    ready_max_lag: int = Field(default=1000, ge=0)
    ready_max_pending_age_s: float = Field(default=1800.0, gt=0)
    alert_webhook_url: str | None = None
    alert_interval_s: float = Field(default=30.0, gt=0)

    # tasks
    flush_window_ms: float = Field(default=0.0, ge=0)
    lease_ms: int = Field(default=15_000, ge=500)
    cancel_poll_ms: int = Field(default=200, ge=10)
    generation_max_duration_s: float = Field(default=600.0, gt=0)
    provider_idle_timeout_s: float = Field(default=120.0, gt=0)
    provider_retries: int = Field(default=3, ge=0, le=20)
    provider_retry_base_ms: int = Field(default=500, ge=1)
    redis_retry_s: float = Field(default=30.0, ge=0)
    celery_visibility_timeout_s: int = Field(default=3600, ge=1)
    celery_soft_shutdown_s: float = Field(default=15.0, ge=0)
    celery_restore_interval_s: int = Field(default=10, ge=1)

    # consumer workers
    consumer_name: str | None = None
    consumer_block_ms: int = Field(default=1000, ge=10)
    consumer_batch: int = Field(default=256, ge=1)
    consumer_claim_idle_ms: int = Field(default=10_000, ge=100)
    consumer_heartbeat_ms: int = Field(default=2000, ge=50)
    consumer_metrics_port: int | None = None
    # Celery events (worker heartbeats, one task event per state change of a generation) so Flower shows consumers.
    consumer_celery_events: bool = True
    worker_metrics_port: int | None = None
    processors: str = ""
    dead_letter_after: int = Field(default=5, ge=1)
    dead_letter_max_length: int = Field(default=10_000, ge=10)
    # How long a generation waits for an operator to replay or drop its dead letter (0: it ends at once).
    dead_letter_hold_s: float = Field(default=0.0, ge=0, le=86_400)
    token_budget_per_minute: int = Field(
        default=0,
        ge=0,
        description="Tokens an API key may have produced per minute (UTC); 0: no limit. "
        "A keys file entry's tokens_per_minute overrides it.",
    )
    token_budget_per_day: int = Field(
        default=0,
        ge=0,
        description="Tokens an API key may have produced per day (UTC); 0: no limit. "
        "A keys file entry's tokens_per_day overrides it.",
    )
    circuit_failures: int = Field(
        default=5,
        ge=0,
        description="Upstream failures in a row after which a model's circuit opens (new generations fail fast or "
        "go to its fallback); 0 turns the breaker off.",
    )
    circuit_cooldown_s: float = Field(
        default=30.0, gt=0, description="How long an open circuit refuses a model before letting one trial through."
    )
    generation_max_attempts: int = Field(default=3, ge=1)
    queue_timeout_s: float = Field(default=600.0, gt=0)
    external_idle_timeout_s: float = Field(default=300.0, gt=0)

    # Names of the design tokenbridge grew from. Two map onto the blocking reads (in seconds); the other two
    # have no meaning here and are named in a warning at start (``order_problems``).
    redis_poll_delay: float | None = Field(
        default=None,
        gt=0,
        description="Seed name: longest wait of the web's hub for new entries, in seconds (HUB_BLOCK_MS).",
    )
    consumer_poll_timeout: float | None = Field(
        default=None,
        gt=0,
        description="Seed name: longest blocking read of a consumer, in seconds (CONSUMER_BLOCK_MS).",
    )
    max_consumers_per_instance: int | None = Field(
        default=None, description="Seed name with no meaning here: run more `consumer` processes instead."
    )
    connection_cleanup_interval: float | None = Field(
        default=None, description="Seed name with no meaning here: closed connections are cleaned up at once."
    )

    _seed_overridden: list[str] = PrivateAttr(default_factory=list)

    @model_validator(mode="after")
    def _seed_names(self) -> Settings:
        # The tokenbridge name wins when both are set.
        overridden = []
        for seed, name in (("redis_poll_delay", "hub_block_ms"), ("consumer_poll_timeout", "consumer_block_ms")):
            value = getattr(self, seed)
            if value is None:
                continue
            if name in self.model_fields_set:
                overridden.append(f"{seed.upper()} is ignored: {name.upper()} is set too, and wins.")
            else:
                setattr(self, name, max(10, round(value * 1000)))
        self._seed_overridden = overridden
        return self

    @model_validator(mode="after")
    def _check(self) -> Settings:
        if self.consumer_heartbeat_ms * 3 > self.consumer_claim_idle_ms:
            raise ValueError("CONSUMER_CLAIM_IDLE_MS must be at least 3 x CONSUMER_HEARTBEAT_MS")
        if self.redis_cluster and not self.celery_broker_url:
            raise ValueError(
                "REDIS_CLUSTER needs CELERY_BROKER_URL: Celery's Redis transport cannot use a cluster; "
                "point it at a standalone Redis or RabbitMQ (amqp://)."
            )
        return self

    @property
    def work_shard_count(self) -> int:
        if self.work_shards is not None:
            return self.work_shards
        return 16 if self.redis_cluster else 1

    @property
    def celery_time_limit_s(self) -> float:
        """Celery's hard time limit: a backstop a minute past the generation's own maximum duration."""
        return self.generation_max_duration_s + 60

    def order_problems(self) -> list[str]:
        """Timeouts whose order defeats the failure model (logged as warnings at start)."""
        problems = []
        if self.celery_visibility_timeout_s <= self.celery_time_limit_s:
            problems.append(
                "CELERY_VISIBILITY_TIMEOUT_S should exceed GENERATION_MAX_DURATION_S + 60: a live task would be "
                "redelivered (the lease still refuses the copy)."
            )
        if self.lease_ms <= 2 * self.cancel_poll_ms:
            problems.append("LEASE_MS should be well above CANCEL_POLL_MS, which is how often a lease is renewed.")
        if self.max_consumers_per_instance is not None:
            problems.append(
                "MAX_CONSUMERS_PER_INSTANCE is ignored: each `consumer` process is one consumer; run more of them "
                "(they share the work and take over each other's generations)."
            )
        if self.connection_cleanup_interval is not None:
            problems.append(
                "CONNECTION_CLEANUP_INTERVAL is ignored: a reader that disconnects is forgotten at once, and reader "
                "counts of a dead web process lapse after 3 x PRESENCE_INTERVAL_S."
            )
        problems.extend(self._seed_overridden)
        return problems

    @cached_property
    def resolved_redis_url(self) -> str:
        """REDIS_URL, or one built from REDIS_HOST/REDIS_PORT/REDIS_PASSWORD/REDIS_DB."""
        if self.redis_url:
            return self.redis_url
        auth = f":{quote(self.redis_password, safe='')}@" if self.redis_password else ""
        return f"redis://{auth}{self.redis_host}:{self.redis_port}/{self.redis_db}"

    @property
    def rate_limit_storage(self) -> tuple[str, dict[str, object]]:
        """Flask-Limiter's storage URI and options: the streams' Redis (its cluster client on a cluster)."""
        if not self.redis_cluster:
            return self.resolved_redis_url, {}
        parsed = urlsplit(self.resolved_redis_url)
        return f"redis+cluster://{parsed.netloc}", {"ssl": True} if parsed.scheme == "rediss" else {}

    @cached_property
    def broker_url(self) -> str:
        return self.celery_broker_url or self.resolved_redis_url

    @cached_property
    def api_key_set(self) -> frozenset[str]:
        return frozenset(key.strip() for key in self.api_keys.split(",") if key.strip())

    @cached_property
    def cors_origin_list(self) -> list[str]:
        return [origin.strip().rstrip("/") for origin in self.cors_origins.split(",") if origin.strip()]

    @property
    def signing_key(self) -> str:
        # With AUTH_DISABLED and no SECRET_KEY, tokens are still signed, with a fixed development key.
        return self.secret_key or "tokenbridge-development-only"

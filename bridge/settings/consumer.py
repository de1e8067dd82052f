"""Settings of the consumer workers (``consumer``): the processor chain, supervision, dead letters, alerts."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class ConsumerSettings(BaseSettings):
    """Consumer workers (``consumer``)."""

    # A validation error names the variable, never its value (which may be a password or a key).
    model_config = SettingsConfigDict(env_prefix="", case_sensitive=False, extra="ignore", hide_input_in_errors=True)

    # consumer workers
    consumer_name: str | None = Field(
        default=None,
        description="Name of a consumer worker in the group (and in Flower). Default `<host>-<pid>-<random>`.",
    )
    consumer_block_ms: int = Field(
        default=1000,
        ge=10,
        description="`BLOCK` time of the consumer's `XREADGROUP`, in ms.",
    )
    consumer_claim_idle_ms: int = Field(
        default=10_000,
        ge=100,
        description="Idle time (ms) after which another consumer takes over a generation. Must be at least three times "
        "`CONSUMER_HEARTBEAT_MS` (every process refuses to start otherwise).",
    )
    consumer_heartbeat_ms: int = Field(
        default=1000,
        ge=50,
        description="Interval (ms) of a consumer's housekeeping: its registration in `llm:consumers`, the refresh of "
        "its work entries, and the supervision of its generations' attempts (a lost worker's generation restarts "
        "within `LEASE_MS` plus this).",
    )
    consumer_metrics_port: int | None = Field(
        default=None,
        description="Port on which a consumer worker serves its Prometheus metrics (all interfaces). Unset: not "
        "served. Two consumers on one host need different ports.",
    )
    # Celery events (worker heartbeats, one task event per state change of a generation) so Flower shows consumers.
    consumer_celery_events: bool = Field(
        default=True,
        description="`1`/`true`: a consumer worker sends Celery events through the broker, so that Flower shows it as "
        "the worker `consumer@<CONSUMER_NAME>` and each generation it processes as a task "
        "`tokenbridge.process_generation` ([operations.md](operations.md#flower)). `0`/`false`: none are sent.",
    )
    worker_metrics_port: int | None = Field(
        default=None,
        description="Port on which a Celery worker (`worker`) serves its Prometheus metrics (all interfaces). Unset: "
        "not served. Two workers on one host need different ports.",
    )
    processors: str = Field(
        default="",
        description="Extra processors for the chain: comma-separated `module:name` ([processors.md](processors.md)).",
    )
    dead_letter_after: int = Field(
        default=5,
        ge=1,
        description="Deliveries of a raw entry that a critical processor fails on before the entry goes to `llm:dead`.",
    )
    dead_letter_max_length: int = Field(
        default=10_000,
        ge=10,
        description="Approximate cap (`MAXLEN ~`) on entries in `llm:dead`.",
    )
    # How long a generation waits for an operator to replay or drop its dead letter (0: it ends at once).
    dead_letter_hold_s: float = Field(
        default=0.0,
        ge=0,
        le=86_400,
        description="How long (seconds) a generation whose entry failed `DEAD_LETTER_AFTER` deliveries waits for an "
        "operator to replay or drop it (`tokenbridge dead-letters`); 0 ends it at once with `poison_entry`.",
    )
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
    token_budget_per_user_per_minute: int = Field(
        default=0,
        ge=0,
        description="Tokens one end user (a request's `user`) of an API key may have produced per minute (UTC), "
        "counted apart from the key's other users; 0: no limit. Past it, the user's running generations end with "
        "`rate_limited` and new ones get 429 `user_token_budget_exceeded`.",
    )
    token_budget_per_user_per_day: int = Field(
        default=0,
        ge=0,
        description="Tokens one end user of an API key may have produced per day (UTC); 0: no limit.",
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
    generation_max_attempts: int = Field(
        default=3,
        ge=1,
        description="Most attempts a generation gets, the first one included. When the last one loses its worker, the "
        "generation ends with the error `worker_lost`.",
    )
    queue_timeout_s: float = Field(
        default=600.0,
        gt=0,
        description="Seconds a generation may wait for a worker to start it before it ends with the error "
        "`queue_timeout`; this includes waiting for a slot of a model at its `concurrency` limit, and an external "
        "generation waiting for its first token.",
    )
    task_resend_s: float = Field(
        default=45.0,
        ge=0,
        description="Seconds after which the consumer that owns a generation sends its Celery task again when no "
        "worker has started it: a worker killed, or cut off from Redis, after taking the task message loses it. "
        "When a worker's heartbeat stops (`DEAD_AFTER_MS`), the tasks sent before then and not started are sent "
        "again at once. The wait doubles at each re-send, at most `TASK_MAX_RESENDS` times per attempt; a copy "
        "too many is refused by the running attempt. Not while tasks wait in the broker's queue: a generation "
        "waiting its turn there is not lost, and its re-send waits until the queue has drained. `QUEUE_TIMEOUT_S` "
        "still ends a generation that never starts. 0 turns re-sending off.",
    )
    task_max_resends: int = Field(
        default=3,
        ge=0,
        description="Most times the task of an attempt that no worker started is sent again (see `TASK_RESEND_S`).",
    )
    external_idle_timeout_s: float = Field(
        default=300.0,
        gt=0,
        description="Seconds an external producer may send nothing new, once it has sent tokens, before its "
        "generation ends with the error `producer_timeout`.",
    )

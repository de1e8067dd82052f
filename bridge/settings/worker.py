"""Settings of the generation tasks (``worker``, Celery)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class WorkerSettings(BaseSettings):
    """Generation tasks (``worker``)."""

    # A validation error names the variable, never its value (which may be a password or a key).
    model_config = SettingsConfigDict(env_prefix="", case_sensitive=False, extra="ignore", hide_input_in_errors=True)

    # tasks
    flush_window_ms: float = Field(
        default=0.0,
        ge=0,
        description="How long (ms) a generation's write waits for more tokens after the first; 0 writes what is "
        "waiting at once (the writes of all generations of a process are flushed together anyway).",
    )
    dead_after_ms: int = Field(
        default=2500,
        ge=200,
        description="A `worker` or `consumer` whose heartbeat (stamped in `llm:workers` / `llm:consumers` every tenth "
        "of this, by a thread of its own) is older than this is dead: a consumer's generations are taken over at "
        "once, a worker's attempts start again at once. A process paused for less keeps its work. Set it the same "
        "on `worker` and `consumer`; hosts' clocks must agree to well within it.",
    )
    lease_ms: int = Field(
        default=15_000,
        ge=500,
        description="Lease of a running attempt, in ms, renewed by its writes and heartbeats once a third of it has "
        "passed. A new attempt can start only after the lease runs out or is released; the consumer that owns the "
        "generation releases it when the worker's heartbeat stops (`DEAD_AFTER_MS`), and starts a new attempt when "
        "it has run out (the backstop, for a worker alive but stuck, or cut off from Redis). Set it the same on "
        "`worker` and `consumer`.",
    )
    cancel_poll_ms: int = Field(
        default=200,
        ge=10,
        description="How often (ms) a task that waits for the model renews its lease and checks for cancellation.",
    )
    generation_max_duration_s: float = Field(
        default=600.0,
        gt=0,
        description="Longest an attempt may run, in seconds; then the generation ends with the error `max_duration`. "
        "Celery's hard time limit for the task is this plus 60 s.",
    )
    provider_idle_timeout_s: float = Field(
        default=120.0,
        gt=0,
        description="Seconds the model may send nothing (before its first token too) before the generation ends with "
        "the error `provider_timeout`.",
    )
    provider_retries: int = Field(
        default=3,
        ge=0,
        le=20,
        description="How many times a model that fails before its first token, with a retryable error, is tried again.",
    )
    provider_retry_base_ms: int = Field(
        default=500,
        ge=1,
        description="Delay before the first of those retries, in ms. It doubles at each retry, up to 30 s, with ±20 % "
        "jitter.",
    )
    redis_retry_s: float = Field(
        default=30.0,
        ge=0,
        description="How long (seconds) a task retries a Redis call that fails on the connection, with backoff from "
        "50 ms to 2 s. Then the attempt gives up; a new one starts once its lease has run out.",
    )
    celery_visibility_timeout_s: int = Field(
        default=3600,
        ge=1,
        description="Redis broker visibility timeout, in seconds: when a task delivered but not acknowledged is "
        "delivered again. A copy of a task that still runs is refused by the lease.",
    )
    celery_soft_shutdown_s: float = Field(
        default=15.0,
        ge=0,
        description="On SIGTERM, seconds a `worker` lets running generations go on before it hands them back (lease "
        "released, message requeued). 0 turns the grace period off. A worker still stopping 10 s after it (a broker "
        "that does not answer) exits anyway.",
    )
    celery_sent_events: bool = Field(
        default=False,
        description="`1`/`true`: `web` sends a Celery `task-sent` event with each generation task, so that Flower "
        "lists the task from its submission rather than from the moment a worker takes it. Off by default: it costs "
        "a broker round trip per generation, and only a monitor reads it. (A `worker` sends its task events only "
        "while a monitor asks for them: Flower does, every few seconds.)",
    )
    celery_restore_interval_s: int = Field(
        default=10,
        ge=1,
        description="How often (seconds) the Redis broker looks for unacknowledged tasks older than the visibility "
        "timeout.",
    )

    @property
    def celery_time_limit_s(self) -> float:
        """Celery's hard time limit: a backstop a minute past the generation's own maximum duration."""
        return self.generation_max_duration_s + 60

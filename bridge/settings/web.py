"""Settings of ``web``'s streams to clients, its limits and its health checks."""

from __future__ import annotations

from functools import cached_property

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class WebSettings(BaseSettings):
    """``web``: streams, limits and health."""

    # A validation error names the variable, never its value (which may be a password or a key).
    model_config = SettingsConfigDict(env_prefix="", case_sensitive=False, extra="ignore", hide_input_in_errors=True)

    # web
    sse_keepalive_s: float = Field(
        default=15.0,
        gt=0,
        le=15.0,
        description="Longest time without an event before `web` sends a keep-alive (`: keep-alive` over SSE); one is "
        "sent after between half of it and all of it.",
    )
    sse_send_timeout_s: float = Field(
        default=30.0,
        gt=0,
        description="Seconds within which a write to an SSE client must succeed. `web` sets it as the socket timeout "
        "and as `TCP_USER_TIMEOUT` (where the OS has it): a client that stopped reading or vanished is dropped and "
        "its connection freed.",
    )
    stream_max_duration_s: float = Field(
        default=3600.0,
        gt=0,
        description="Longest life of one SSE response or WebSocket, in seconds. After it (noticed within half of "
        "`SSE_KEEPALIVE_S`) the stream ends without a terminal event and the client resumes.",
    )
    durable_streams_long_poll_s: float = Field(
        default=20.0,
        gt=0,
        le=300.0,
        description="Longest wait of a Durable Streams `live=long-poll` read that finds nothing new before it answers "
        "`204` ([durable-streams.md](durable-streams.md)); keep it below the idle timeout of any proxy in front.",
    )
    durable_streams_public: bool = Field(
        default=False,
        description="`1`/`true`: a request under `/v1/stream/` without credentials may create, write, read and delete "
        "streams that belong to nobody (never tokenbridge's generations or sessions, nor a key's streams): for the "
        "Durable Streams conformance suite and local tests only; `web` warns at start while it is on "
        "([durable-streams.md](durable-streams.md)).",
    )
    hub_block_ms: int = Field(
        default=5000,
        ge=10,
        description="Longest wait of the hub for a hint, in ms; every watched stream is also read this often (a lost "
        "hint delays, never loses).",
    )
    # How often each web process publishes its reader counts (a dead process stops counting after 3 of these).
    presence_interval_s: float = Field(
        default=2.0,
        gt=0,
        le=60,
        description="How often each web process publishes its reader counts (`readers` of records and `/v1/stats`), "
        "in seconds; a process that stops publishing is no longer counted after three intervals.",
    )
    max_body_bytes: int = Field(
        default=1_048_576,
        ge=1024,
        description="Largest request body, in bytes. A larger one gets 413.",
    )
    max_tokens_limit: int = Field(
        default=32_768,
        ge=1,
        description="Highest `max_tokens` a request may ask for; a higher value gets 422. A registry entry's "
        "`max_tokens` lowers it for that model.",
    )
    redis_retry_after_s: int = Field(
        default=2,
        ge=1,
        description="`Retry-After` of 503 answers (Redis or the task queue down), in seconds.",
    )
    rate_limit: str = Field(
        default="600/minute",
        description="Request limit per API key (per client address for requests without a valid API key), in "
        "Flask-Limiter notation (`100/second`, `600/minute`, `10000/hour`). One count covers every `/v1` route of a "
        "key, kept in Redis, so it holds over all `web` processes. Over it: 429 `rate_limited` with `Retry-After`. "
        "Empty turns the limit off.",
    )
    max_running_per_key: int = Field(
        default=100,
        ge=0,
        description="Most generations an API key may have that have not ended; one more gets 429 `too_many_running` "
        "with `Retry-After: 1`. A generation counts until its terminal event is committed, or at most "
        "`GENERATION_MAX_DURATION_S` + `QUEUE_TIMEOUT_S` + 60 s. 0 turns the cap off.",
    )
    max_running_per_user: int = Field(
        default=0,
        ge=0,
        description="Most generations one end user (a request's `user`) of an API key may have that have not ended; "
        "one more gets 429 `user_too_many_running` with `Retry-After: 1`, and the key's other users are not "
        "affected. Counted and released as `MAX_RUNNING_PER_KEY` is. Requests without `user` are not counted. 0 "
        "turns the cap off.",
    )
    max_image_bytes: int = Field(
        default=5_242_880,
        ge=1,
        description="Largest inline image (a `data:` URI of an `image_url` content part), in bytes once decoded; a "
        "larger one gets 413 `image_too_large`. Inline images also count towards `MAX_BODY_BYTES` (as base64, a "
        "third larger): raise that too to send large images.",
    )
    max_images_per_request: int = Field(
        default=100,
        ge=1,
        description="Most image parts in one request (inline or by URL); more get 422.",
    )
    cors_origins: str = Field(
        default="",
        description="Comma-separated origins (`https://app.example.com`) whose browser pages may call `/v1` (CORS), "
        "and open WebSockets. Empty: no CORS headers, and WebSockets only from the site itself.",
    )
    # Proxies in front of web that append to X-Forwarded-For (werkzeug's ProxyFix); 0: the header is ignored.
    trusted_proxies: int = Field(
        default=0,
        ge=0,
        description="How many proxies in front of `web` append to `X-Forwarded-For`: the client address (rate limits "
        "per address, the audit trail's `client`) is the one that many entries from its end. 0: the header is "
        "never trusted, and the address is the TCP peer's. Heroku and Render: 1 ([deploy.md](deploy.md)).",
    )
    flower_url: str = Field(
        default="",
        description="The Flower link on `/dashboard`. Empty: this host on `PORT + 300` (as under `make dev`).",
    )
    idempotency_ttl_s: int = Field(
        default=86_400,
        ge=1,
        description="How long an `Idempotency-Key` is remembered, in seconds.",
    )
    ready_max_redis_latency_ms: float = Field(
        default=100.0,
        gt=0,
        description="`/readyz` reports Redis as `degraded` when its `PING` takes longer than this, in ms.",
    )
    ready_max_lag: int = Field(
        default=1000,
        ge=0,
        description="`/readyz` reports the consumers as `degraded`, and the health webhook as unhealthy, when more "
        "generations than this wait for a consumer (the consumer group's lag on `llm:work`; Redis 7 or newer).",
    )
    ready_max_pending_age_s: float = Field(
        default=1800.0,
        gt=0,
        description="`/readyz` reports the consumers as `degraded`, and the health webhook as unhealthy, when the "
        "oldest generation a consumer holds and that has not ended was created longer ago than this, in seconds.",
    )
    alert_webhook_url: str | None = Field(
        default=None,
        description="URL the consumer workers post health alerts to ([operations.md](operations.md#alerting)). Set it "
        "on `consumer`. Unset: no alerts.",
    )
    alert_interval_s: float = Field(
        default=30.0,
        gt=0,
        description="Seconds between two health checks for the webhook.",
    )

    @cached_property
    def cors_origin_list(self) -> list[str]:
        return [origin.strip().rstrip("/") for origin in self.cors_origins.split(",") if origin.strip()]

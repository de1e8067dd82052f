"""Every setting of tokenbridge, read once from the environment by each entry point."""

from __future__ import annotations

from functools import cached_property
from typing import Literal
from urllib.parse import parse_qsl, quote, urlsplit

from pydantic import Field, PrivateAttr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Configuration shared by web, worker and consumer. Field names map to upper-case environment variables."""

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
        "tasks to it, `worker` takes them from it. Required with `REDIS_CLUSTER`.",
    )

    port: int = Field(
        default=8000,
        description="Port `web` (and `flower`) binds to, read by the Procfile commands.",
    )
    api_keys: str = Field(
        default="",
        description="Comma-separated API keys, accepted as `Authorization: Bearer <key>`. An entry `name:key` names "
        "its key (the name appears in logs and names its limits); a bare key is named `key-` and the first 10 hex "
        "digits of its SHA-256. An entry that contains `:` is always read as `name:key`. Empty (and no "
        "`API_KEYS_FILE`): every `/v1` request gets 401, and `web` logs a warning.",
    )
    # TOML file of [[keys]] (name, key or key_sha256, owner, scope), read again when it changes.
    api_keys_file: str | None = Field(
        default=None,
        description="TOML file of `[[keys]]` (`name`, `key` or `key_sha256`, `owner`, `scope`), used beside "
        "`API_KEYS` and read again within a second of a change. See [security.md](security.md).",
    )
    # name=scope pairs for the keys of API_KEYS (scopes: full, reader, producer, admin; default full).
    api_key_scopes: str = Field(
        default="",
        description="`name=scope` pairs for `API_KEYS` entries: `full` (default), `reader`, `producer`, `admin`. A "
        "name that no entry has stops `web` at start.",
    )
    auth_disabled: bool = Field(
        default=False,
        description="`1`/`true`: every `/v1` request is allowed without credentials, as an administrator. Development "
        "only; `web` logs a warning at start. Without `SECRET_KEY`, stream tokens are then signed with a fixed "
        "development key.",
    )
    secret_key: str | None = Field(
        default=None,
        description="Signs stream tokens; every `web` process needs the same one. `web` requires it unless "
        "`AUTH_DISABLED=1`.",
    )
    # A bearer token for the operations endpoints (/metrics, the checks of /readyz); unset: they are public.
    ops_token: str | None = Field(
        default=None,
        description="Bearer token that `/metrics` and the details (`checks`) of `/readyz` require, as "
        "`Authorization: Bearer <token>`; an API key with the `admin` scope is accepted too. The bare status of "
        "`/readyz` stays public for load balancers. Unset: both are public, and `web` logs a warning at start "
        "([security.md](security.md#operations-endpoints)).",
    )
    stream_token_ttl_s: int = Field(
        default=3600,
        ge=1,
        description="Lifetime of a stream token, in seconds.",
    )

    redis_stream_max_length: int = Field(
        default=100_000,
        ge=10,
        description="Approximate cap (`MAXLEN ~`) on entries per stream: raw, out and session out.",
    )
    redis_stream_retention_ms: int = Field(
        default=86_400_000,
        ge=1000,
        description="How long a finished generation stays readable, in ms: its record (`GET /v1/generations/{id}`: "
        "status, usage, the whole text) and its terminal event expire this long after the end. Its events "
        "themselves are kept for `REDIS_RESUME_WINDOW_MS`.",
    )
    redis_resume_window_ms: int = Field(
        default=300_000,
        ge=1000,
        description="How long a finished generation's events are kept, in ms (and a session's, after its latest "
        "generation ends): a reader resuming within it gets exactly the events after its cursor. Later (and until "
        "`REDIS_STREAM_RETENTION_MS`), a reader gets a `reset` with the whole text, then the terminal event "
        "([API.md](API.md#reset-after-a-trimmed-cursor)). Longer than the retention: the retention applies.",
    )
    redis_consumer_group: str = Field(
        default="llm:processors",
        description="Consumer group of the processor chain. Every process must use the same one.",
    )
    log_format: Literal["json", "text"] = Field(
        default="json",
        description="`json` (one JSON object per line on stderr) or `text`.",
    )
    log_level: str = Field(
        default="INFO",
        description="Log level of `web`, `worker` and `consumer`. The `worker` Procfile line also passes it to "
        "`--loglevel`.",
    )
    models_file: str | None = Field(
        default=None,
        description="Path of the model registry, a TOML file ([models.md](models.md)). Read by `web`, `worker` and "
        "`consumer` (its `cache` processor stores the answers of models with `cache_ttl_s`), which must all see the "
        "same file. Unset: only `echo`, `synthetic` and `external` exist.",
    )

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
    hub_read_count: int = Field(
        default=1000,
        ge=1,
        description="`COUNT` of the hub's `XREAD` (entries per stream per read).",
    )
    client_queue_size: int = Field(
        default=1024,
        ge=8,
        description="Events buffered per client. A client that falls further behind re-reads from Redis.",
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
    consumer_batch: int = Field(
        default=256,
        ge=1,
        description="`COUNT` of the consumer's `XREADGROUP`.",
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
        if self.redis_sentinels and self.redis_cluster:
            raise ValueError("REDIS_SENTINELS and REDIS_CLUSTER exclude each other: a cluster fails over by itself.")
        _ = self.sentinel_addresses  # a malformed address stops the process at start
        return self

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

    @property
    def resume_window_ms(self) -> int:
        """How long events are kept after the end: the window, never longer than the retention."""
        return min(self.redis_resume_window_ms, self.redis_stream_retention_ms)

    @property
    def session_ttl_ms(self) -> int:
        """How long a session's owner key is kept: longer than its streams, which expire twice the retention after
        the end of its last generation (which may wait ``queue_timeout_s`` and run ``generation_max_duration_s``)."""
        longest_s = self.generation_max_duration_s + self.queue_timeout_s + 60
        return self.redis_stream_retention_ms * 2 + int(longest_s * 1000)

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
            return self._with_cert_reqs(self.redis_url)
        auth = f":{quote(self.redis_password, safe='')}@" if self.redis_password else ""
        return f"redis://{auth}{self.redis_host}:{self.redis_port}/{self.redis_db}"

    def _with_cert_reqs(self, url: str) -> str:
        """``url`` with ``REDIS_SSL_CERT_REQS`` added, when it is a ``rediss://`` URL without ``ssl_cert_reqs``."""
        if self.redis_ssl_cert_reqs and url.startswith("rediss://") and "ssl_cert_reqs=" not in url:
            url += f"{'&' if '?' in url else '?'}ssl_cert_reqs={self.redis_ssl_cert_reqs}"
        return url

    @property
    def rate_limit_storage(self) -> tuple[str, dict[str, object]]:
        """Flask-Limiter's storage URI and options: the streams' Redis (its cluster client on a cluster)."""
        options: dict[str, object] = {}
        if self.redis_max_connections:
            options["max_connections"] = self.redis_max_connections
        if not self.redis_cluster:
            return self.resolved_redis_url, options
        parsed = urlsplit(self.resolved_redis_url)
        if parsed.scheme == "rediss":
            options["ssl"] = True
            # The cluster URI loses the query, so a managed Redis' `?ssl_cert_reqs=none` is carried over here.
            cert_reqs = dict(parse_qsl(parsed.query)).get("ssl_cert_reqs")
            if cert_reqs:
                options["ssl_cert_reqs"] = cert_reqs
        return f"redis+cluster://{parsed.netloc}", options

    @cached_property
    def broker_url(self) -> str:
        if self.celery_broker_url:
            # A second Redis over TLS (CELERY_BROKER_URL=rediss://…) is usually the same kind of managed Redis.
            return self._with_cert_reqs(self.celery_broker_url)
        if self.sentinel_addresses:
            # kombu's Sentinel transport: one `sentinel://` URL per sentinel joined by `;`, each carrying the
            # master's credentials and database; the master's name comes in the transport options.
            parsed = urlsplit(self.resolved_redis_url)
            auth = parsed.netloc.rpartition("@")[0]
            auth = f"{auth}@" if auth else ""
            db = parsed.path.lstrip("/") or "0"
            return ";".join(f"sentinel://{auth}{host}:{port}/{db}" for host, port in self.sentinel_addresses)
        return self.resolved_redis_url

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

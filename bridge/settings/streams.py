"""Settings of the streams kept in Redis (length, retention, resume window), of logs and of the model registry."""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class StreamSettings(BaseSettings):
    """Streams and logs."""

    # A validation error names the variable, never its value (which may be a password or a key).
    model_config = SettingsConfigDict(env_prefix="", case_sensitive=False, extra="ignore", hide_input_in_errors=True)

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

    @property
    def resume_window_ms(self) -> int:
        """How long events are kept after the end: the window, never longer than the retention."""
        return min(self.redis_resume_window_ms, self.redis_stream_retention_ms)

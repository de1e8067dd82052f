"""Settings on their way out: still read and honoured until the next minor release, each named in a warning at start.

Each was internal tuning; the value it set is now a constant beside the code it tunes (its name is the variable's).
"""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

# What a user who sets a deprecated setting is told to do instead, by field.
REPLACEMENTS = {
    "hub_read_count": "nothing: the hub's `COUNT` per read is a tuned constant (`HUB_READ_COUNT` in app/hub.py)",
    "client_queue_size": "nothing: the events buffered per client are a tuned constant (`CLIENT_QUEUE_SIZE` in "
    "app/hub.py)",
    "consumer_batch": "nothing: the consumer's `COUNT` per read is a tuned constant (`CONSUMER_BATCH` in "
    "workers/consumer.py)",
}


class DeprecatedSettings(BaseSettings):
    """Deprecated settings."""

    # A validation error names the variable, never its value (which may be a password or a key).
    model_config = SettingsConfigDict(env_prefix="", case_sensitive=False, extra="ignore", hide_input_in_errors=True)

    hub_read_count: int | None = Field(
        default=None,
        ge=1,
        description="Deprecated: removed in the next minor release; unset it. `COUNT` of the hub's `XREAD` (entries "
        "per stream per read). Unset: 1000, a tuned constant.",
    )
    client_queue_size: int | None = Field(
        default=None,
        ge=8,
        description="Deprecated: removed in the next minor release; unset it. Events buffered per client; a client "
        "that falls further behind re-reads from Redis. Unset: 1024, a tuned constant.",
    )
    consumer_batch: int | None = Field(
        default=None,
        ge=1,
        description="Deprecated: removed in the next minor release; unset it. `COUNT` of the consumer's "
        "`XREADGROUP`. Unset: 256, a tuned constant.",
    )

    def deprecations(self) -> list[str]:
        """A warning for each deprecated setting that is set (logged at start, with ``order_problems``)."""
        return [
            f"{name.upper()} is deprecated and will be removed in the next minor release; its value is honoured until "
            f"then. Instead: {instead}."
            for name, instead in REPLACEMENTS.items()
            if getattr(self, name) is not None
        ]

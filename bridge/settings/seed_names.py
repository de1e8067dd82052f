"""Names of the design tokenbridge grew from: two map onto tokenbridge's own, two are named in a warning at start."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class SeedNameSettings(BaseSettings):
    """Names from the original design."""

    # A validation error names the variable, never its value (which may be a password or a key).
    model_config = SettingsConfigDict(env_prefix="", case_sensitive=False, extra="ignore", hide_input_in_errors=True)

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

"""Every setting of tokenbridge, read once from the environment by each entry point.

One ``Settings`` reads them all (every process reads the same environment); its fields are declared by concern, one
module each: ``redis`` (Redis and the broker), ``web_keys`` and ``web`` (``web``), ``streams`` (streams and logs),
``worker`` (generation tasks), ``consumer`` (consumer workers), ``seed_names`` (the original design's names) and
``deprecated`` (settings read until the next minor release).
What ties them together (the seed names' mapping, checks across concerns, the order of timeouts) is here.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import cached_property
from typing import Any, Self

from pydantic import PrivateAttr, model_validator
from pydantic_settings import SettingsConfigDict

from bridge.settings.consumer import ConsumerSettings
from bridge.settings.deprecated import DeprecatedSettings
from bridge.settings.redis import RedisSettings
from bridge.settings.seed_names import SeedNameSettings
from bridge.settings.streams import StreamSettings
from bridge.settings.web import WebSettings
from bridge.settings.web_keys import WebKeySettings
from bridge.settings.worker import WorkerSettings


class Settings(
    DeprecatedSettings,
    SeedNameSettings,
    ConsumerSettings,
    WorkerSettings,
    WebSettings,
    StreamSettings,
    WebKeySettings,
    RedisSettings,
):
    """Configuration shared by web, worker and consumer. Field names map to upper-case environment variables."""

    # A validation error names the variable, never its value (which may be a password or a key).
    model_config = SettingsConfigDict(env_prefix="", case_sensitive=False, extra="ignore", hide_input_in_errors=True)

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

    def model_copy(self, *, update: Mapping[str, Any] | None = None, deep: bool = False) -> Self:
        """A copy; with ``update``, what is derived from the fields and cached (``redis``, ``broker_url``, …) is
        derived again from the copy's fields instead of carried over."""
        copied = super().model_copy(update=update, deep=deep)
        if update:
            for klass in type(self).__mro__:
                for name, attr in vars(klass).items():
                    if isinstance(attr, cached_property):
                        copied.__dict__.pop(name, None)
        return copied

    @property
    def session_ttl_ms(self) -> int:
        """How long a session's owner key is kept: longer than its streams, which expire twice the retention after
        the end of its last generation (which may wait ``queue_timeout_s`` and run ``generation_max_duration_s``)."""
        longest_s = self.generation_max_duration_s + self.queue_timeout_s + 60
        return self.redis_stream_retention_ms * 2 + int(longest_s * 1000)

    def order_problems(self) -> list[str]:
        """Timeouts whose order defeats the failure model, names that are ignored, and deprecated settings that are
        set (logged as warnings at start by ``web``, ``worker`` and ``consumer``)."""
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
        problems.extend(self.deprecations())
        return problems


__all__ = ["Settings"]

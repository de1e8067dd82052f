"""Exceptions of tokenbridge, under one root."""

from __future__ import annotations


class TokenbridgeError(Exception):
    """Raised when tokenbridge itself fails; the root of every project exception."""


class ProviderError(TokenbridgeError):
    """Raised when a model provider fails; ``code`` is the error code readers see."""

    def __init__(
        self,
        message: str,
        *,
        code: str = "provider_error",
        retryable: bool = False,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.retryable = retryable
        # The upstream's own Retry-After, honoured instead of the backoff when longer.
        self.retry_after_s = retry_after_s


class UnknownModelError(TokenbridgeError):
    """Raised when a generation names a model that is not configured."""


class ProcessingError(TokenbridgeError):
    """Raised when an entry cannot be processed (a critical processor failed, or the entry is malformed)."""


class RedisVersionError(TokenbridgeError):
    """Raised at start when a Redis that tokenbridge uses is older than ``connections.MIN_REDIS_VERSION``."""


class RedisLayoutError(TokenbridgeError):
    """Raised at start when Redis holds data in a key layout other than ``layout.LAYOUT_VERSION``."""

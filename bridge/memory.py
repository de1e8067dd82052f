"""Redis at ``maxmemory``: recognising its refusals, and keeping room for running generations.

With ``maxmemory-policy noeviction`` Redis refuses writes that may grow memory (``OOM command not
allowed``) and never drops data. New generations are refused first, once memory passes
``REDIS_MEMORY_HEADROOM`` of ``maxmemory``, so that those already running have room to finish; the writes
that end a generation are made so that Redis accepts them even when full (``bridge/lua/write.lua``).
"""

from __future__ import annotations

import logging
import time

import redis

from bridge.connections import is_cluster

logger = logging.getLogger(__name__)

OOM_MESSAGE = "OOM command not allowed"
# The error code of a generation ended because Redis refused one of its writes (docs/API.md).
OUT_OF_MEMORY_CODE = "redis_out_of_memory"


def is_out_of_memory(error: BaseException) -> bool:
    """True for Redis' refusal at ``maxmemory`` (Redis 6 reports one inside a script as a plain script error)."""
    return isinstance(error, redis.exceptions.OutOfMemoryError) or (
        isinstance(error, redis.ResponseError) and OOM_MESSAGE in str(error)
    )


class MemoryGuard:
    """Whether Redis is too full for new generations, read from ``INFO memory`` at most every ``interval_s``."""

    def __init__(self, client: redis.Redis, *, headroom: float, interval_s: float = 1.0) -> None:
        self.client = client
        self.headroom = headroom
        self.interval_s = interval_s
        self._checked_at = -interval_s
        self._full = False

    def full(self) -> bool:
        """True while ``used_memory`` is above the headroom fraction of ``maxmemory`` (never without one).

        A cluster client is not checked: each master has its own limit (its refusals still get 503).
        """
        now = time.monotonic()
        if now - self._checked_at < self.interval_s or is_cluster(self.client):
            return self._full
        self._checked_at = now
        info = self.client.info("memory")
        limit = int(info.get("maxmemory", 0))
        full = limit > 0 and int(info.get("used_memory", 0)) >= self.headroom * limit
        if full != self._full:
            log = logger.warning if full else logger.info
            log(
                "Redis memory %s of maxmemory %s: new generations %s.",
                info.get("used_memory"),
                limit,
                "refused" if full else "accepted again",
            )
        self._full = full
        return full

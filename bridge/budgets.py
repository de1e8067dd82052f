"""Token budgets per API key, and per end user of a key: tokens per minute and per day, counted on what the
chain really produced.

The consumer's ``TokenBudgetProcessor`` adds each committed batch's tokens to two fixed windows per key,
``llm:budget:{key}:m:<minute>`` and ``llm:budget:{key}:d:<day>`` (UTC), at most every ``FLUSH_S``; a key that
is past a limit has its running generations ended with ``rate_limited``. ``web`` refuses new generations of
such a key with 429 ``token_budget_exceeded`` and ``Retry-After`` until the window frees. A key's limits are
written into each generation's ``:meta`` when it is created, so every consumer enforces the same ones.

An end user (a request's ``user``) of a key has windows of its own, named ``keys.user_budget_name`` (with
``TOKEN_BUDGET_PER_USER_PER_MINUTE`` and ``_PER_DAY``): the same counting, per user, so that one user of a
backend key cannot spend what the others need (429 ``user_token_budget_exceeded``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import redis

from bridge import keys

# How often a consumer adds up what it committed: the most a key can overshoot is what its generations produce
# in this long (plus one commit).
FLUSH_S = 0.25
_MINUTE_TTL_S = 120
_DAY_TTL_S = 2 * 86_400


@dataclass(frozen=True, slots=True)
class Budget:
    per_minute: int = 0  # 0: no limit
    per_day: int = 0

    @property
    def limited(self) -> bool:
        return bool(self.per_minute or self.per_day)


def window_keys(key_name: str, now: float | None = None) -> tuple[str, str]:
    now = time.time() if now is None else now
    return keys.budget_minute(key_name, int(now // 60)), keys.budget_day(key_name, int(now // 86_400))


def add(pipe: Any, key_name: str, tokens: int, now: float | None = None) -> None:
    """Queue the increments of both windows on ``pipe`` (two results: the totals after it)."""
    minute, day = window_keys(key_name, now)
    pipe.incrby(minute, tokens)
    pipe.expire(minute, _MINUTE_TTL_S)
    pipe.incrby(day, tokens)
    pipe.expire(day, _DAY_TTL_S)


@dataclass(frozen=True, slots=True)
class Usage:
    minute: int
    day: int
    budget: Budget
    now: float

    @property
    def exceeded(self) -> str | None:
        """Which window is spent (``minute`` or ``day``), or None."""
        if self.budget.per_day and self.day >= self.budget.per_day:
            return "day"
        if self.budget.per_minute and self.minute >= self.budget.per_minute:
            return "minute"
        return None

    @property
    def retry_after_s(self) -> int:
        """Seconds until the spent window ends (1 at least)."""
        period = 86_400 if self.exceeded == "day" else 60
        return max(1, int(period - self.now % period) + 1)

    def public(self) -> dict[str, Any]:
        return {
            "tokens_this_minute": self.minute,
            "tokens_today": self.day,
            "tokens_per_minute": self.budget.per_minute or None,
            "tokens_per_day": self.budget.per_day or None,
        }


def usage(client: redis.Redis, key_name: str, budget: Budget) -> Usage:
    return usages(client, [(key_name, budget)])[0]


def usages(client: redis.Redis, spenders: list[tuple[str, Budget]]) -> list[Usage]:
    """The usage of each (name, budget), in one round trip."""
    now = time.time()
    pipe = client.pipeline(transaction=False)
    for key_name, _ in spenders:
        for window in window_keys(key_name, now):
            pipe.get(window)  # GETs, not MGET: a cluster's pipeline takes no MGET
    counts = pipe.execute()
    return [
        Usage(int(counts[2 * i] or 0), int(counts[2 * i + 1] or 0), budget, now)
        for i, (_, budget) in enumerate(spenders)
    ]

"""Proofs of life of the processes that hold work, and how the others notice a death within seconds.

A thread of its own (never the loop that does the work, which a long batch or a slow processor can hold) stamps
the process's name in a sorted set every tenth of ``DEAD_AFTER_MS``: consumers in ``llm:consumers``, Celery workers
in ``llm:workers``. A process whose stamp is older than ``DEAD_AFTER_MS`` is dead, and its work moves at once:

- a consumer's generations are taken over by the first consumer that notices (``Ownership.take_over_dead``),
  instead of after ``CONSUMER_CLAIM_IDLE_MS`` of idleness, which stays the backstop for a process alive but stuck;
- a worker's attempts lose their lease (its generations' ``:meta`` name the worker that claimed them), so the
  consumers that supervise them start new attempts at once, instead of when ``LEASE_MS`` runs out, which stays the
  backstop.

A process paused for less than ``DEAD_AFTER_MS`` (SIGSTOP, a CPU-starved host, a long collection) keeps its work;
one paused longer is fenced off exactly as before (commit fences, attempt numbers): speed costs no duplicate.
After a Redis outage every stamp is old: a process judges others only once its own stamps have gone through for a
whole ``DEAD_AFTER_MS`` (``Heartbeat.may_judge_others``). Stamps are the hosts' clocks, which must agree to well
within ``DEAD_AFTER_MS`` (NTP does).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from typing import Any

import redis

from bridge.connections import UNAVAILABLE

logger = logging.getLogger(__name__)

# Why a stamp may not go through: Redis away, or at maxmemory.
_MISSED: tuple[type[Exception], ...] = (*UNAVAILABLE, redis.ResponseError)
# Stamps per DEAD_AFTER_MS: a process is dead after missing this many in a row.
BEATS_PER_DEATH = 10


def beat_interval_s(dead_after_ms: int) -> float:
    return dead_after_ms / 1000 / BEATS_PER_DEATH


def beat(client: redis.Redis, registry: str, name: str) -> None:
    client.zadd(registry, {name: int(time.time() * 1000)})


def dead(client: redis.Redis, registry: str, dead_after_ms: int, *, but: str = "") -> list[str]:
    """The processes of ``registry`` whose last stamp is older than ``dead_after_ms``."""
    return [name for name in last_stamps_of_dead(client, registry, dead_after_ms) if name != but]


def last_stamps_of_dead(client: redis.Redis, registry: str, dead_after_ms: int) -> dict[str, int]:
    """The last stamp (ms) of each process of ``registry`` whose last stamp is older than ``dead_after_ms``."""
    before = int(time.time() * 1000) - dead_after_ms
    found: Any = client.zrangebyscore(registry, "-inf", f"({before}", withscores=True)
    return {(name.decode() if isinstance(name, bytes) else name): int(stamp) for name, stamp in found}


class Heartbeat:
    """Stamps ``name`` in ``registry`` from a thread of its own until ``stop``."""

    def __init__(self, client: redis.Redis, registry: str, name: str, *, dead_after_ms: int) -> None:
        self.client = client
        self.registry = registry
        self.name = name
        self.interval_s = beat_interval_s(dead_after_ms)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tokenbridge-heartbeat", daemon=True)
        self._failing = False
        self.dead_after_s = dead_after_ms / 1000
        # Since when (monotonic) this consumer's stamps have gone through without a miss.
        self._steady_since = time.monotonic()

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def start(self) -> None:
        """Stamp now (nobody takes the work of one that just started), then from the thread. Redis away at start
        (restarting, or loading its data) is an outage like any other: the thread stamps once it answers."""
        self._steady_since = time.monotonic()
        self._stamp()
        self._thread.start()

    def may_judge_others(self) -> bool:
        """Whether this consumer's own stamps went through for a whole ``CONSUMER_DEAD_AFTER_MS``: after an outage
        every stamp is old, and the others need that long to stamp again before one of them can be called dead."""
        return self.running and not self._failing and time.monotonic() - self._steady_since >= self.dead_after_s

    def stop(self, *, withdraw: bool = False) -> None:
        """Stop stamping; ``withdraw``: strike the name off too (a clean exit: nobody need wait for its death)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=self.interval_s * 2 + 1)
        if withdraw:
            with contextlib.suppress(*_MISSED):
                self.client.zrem(self.registry, self.name)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._stamp()

    def _stamp(self) -> None:
        try:
            beat(self.client, self.registry, self.name)
        except _MISSED as exc:
            # Redis away (or at maxmemory): every consumer misses its beats alike, and the idle takeover
            # backstop does not fire while Redis cannot answer. Logged once per outage.
            if not self._failing:
                logger.warning("%s could not stamp its heartbeat: %s", self.name, exc)
            self._failing = True
            return
        if self._failing:
            logger.info("%s stamps its heartbeat again.", self.name)
            self._steady_since = time.monotonic()
        self._failing = False

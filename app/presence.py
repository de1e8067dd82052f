"""Who is watching: live counts of the readers of each generation and session, across every web process.

Each web process counts its own open SSE and WebSocket readers in memory (nothing on the per-token path) and
publishes the counts every ``PRESENCE_INTERVAL_S``: a hash ``llm:presence:web:<process>`` of
``g:<generation>`` / ``s:<session>`` → readers, which expires unless refreshed, and the process's heartbeat
in the sorted set ``llm:presence:web``. A reader of the counts adds up the hashes of the processes whose
heartbeat is recent, so a process that dies stops counting within three times ``PRESENCE_INTERVAL_S``.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import redis

from bridge import keys

logger = logging.getLogger(__name__)

# A process whose heartbeat is older than this many intervals is not counted any more.
STALE_INTERVALS = 3


class Presence:
    """This web process's readers, published periodically; ``readers()`` reads every process's."""

    def __init__(self, client: redis.Redis, interval_s: float) -> None:
        self.client = client
        self.interval_s = interval_s
        self.process_id = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self._counts: Counter[str] = Counter()
        self._dirty = True
        self._published: set[str] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @contextmanager
    def watching(self, *, generation_id: str | None = None, session_id: str | None = None) -> Iterator[None]:
        """Count one reader of a generation or a session while the block runs."""
        field = f"g:{generation_id}" if generation_id else f"s:{session_id}"
        self._change(field, 1)
        try:
            yield
        finally:
            self._change(field, -1)

    def _change(self, field: str, delta: int) -> None:
        with self._lock:
            self._counts[field] += delta
            if self._counts[field] <= 0:
                del self._counts[field]
            self._dirty = True
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="tokenbridge-presence", daemon=True)
                self._thread.start()

    # -- publishing ----------------------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.publish()
            except redis.RedisError as exc:
                logger.warning("Could not publish reader counts: %s", exc)

    def publish(self) -> None:
        """Write this process's counts (when they changed) and its heartbeat."""
        ttl_ms = int(self.interval_s * STALE_INTERVALS * 1000)
        key = keys.presence_process(self.process_id)
        with self._lock:
            snapshot = dict(self._counts) if self._dirty else None
            self._dirty = False
        before = self._published
        pipe = self.client.pipeline(transaction=False)
        if snapshot is not None:
            gone = before - snapshot.keys()
            if gone:
                pipe.hdel(key, *gone)
            if snapshot:
                pipe.hset(key, mapping={field: str(count) for field, count in snapshot.items()})
            self._published = set(snapshot)
        if self._published:
            pipe.pexpire(key, ttl_ms)
        now = time.time()
        pipe.zadd(keys.PRESENCE_PROCESSES, {self.process_id: now})
        pipe.zremrangebyscore(keys.PRESENCE_PROCESSES, "-inf", now - ttl_ms / 1000)
        try:
            pipe.execute()
        except redis.RedisError:
            # Not written (or not all of it): write everything again next time.
            self._published = before | self._published
            self._dirty = True
            raise

    def close(self) -> None:
        """Stop publishing and withdraw this process's counts (a clean shutdown)."""
        self._stop.set()
        try:
            pipe = self.client.pipeline(transaction=False)
            pipe.delete(keys.presence_process(self.process_id))
            pipe.zrem(keys.PRESENCE_PROCESSES, self.process_id)
            pipe.execute()
        except redis.RedisError:
            pass

    # -- reading -------------------------------------------------------------------------------------

    def _live_processes(self) -> list[str]:
        since = time.time() - self.interval_s * STALE_INTERVALS
        processes: Any = self.client.zrangebyscore(keys.PRESENCE_PROCESSES, since, "+inf")
        return [str(p) for p in processes]

    def readers(self, fields: list[str]) -> dict[str, int]:
        """Readers of each ``g:<id>`` / ``s:<id>`` field, summed over every live web process."""
        processes = self._live_processes()
        totals = dict.fromkeys(fields, 0)
        if not processes or not fields:
            return totals
        pipe = self.client.pipeline(transaction=False)
        for process in processes:
            pipe.hmget(keys.presence_process(process), fields)
        for counts in pipe.execute():
            for field, count in zip(fields, counts, strict=True):
                totals[field] += int(count or 0)
        return totals

    def summary(self) -> dict[str, int]:
        """Every reader of every live process: total, and how many generations and sessions are watched."""
        processes = self._live_processes()
        pipe = self.client.pipeline(transaction=False)
        for process in processes:
            pipe.hgetall(keys.presence_process(process))
        merged: Counter[str] = Counter()
        for counts in pipe.execute() if processes else []:
            merged.update({field: int(count) for field, count in counts.items()})
        return {
            "total": sum(merged.values()),
            "generations": sum(1 for field in merged if field.startswith("g:")),
            "sessions": sum(1 for field in merged if field.startswith("s:")),
        }

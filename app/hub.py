"""The hub: one Redis reader per web process, fanning stream entries out to every client that watches them.

A single thread (a greenlet under gunicorn's gevent worker) reads every watched key that the writers' hints
name (a ``bridge.readers.StreamReader``: one subscription connection, and one read, per Redis node, whatever
the client count) and appends what it reads to each subscriber's bounded buffer. A new key wakes the
waiting read at once.

Joining without a gap or a duplicate: ``subscribe`` returns the hub's position for the key at the moment
the subscriber was registered; the subscriber reads ``(its cursor, position]`` itself with ``XRANGE`` and
then takes everything after ``position`` from its buffer.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from typing import Any

import orjson
import redis

from app import metrics
from bridge import keys
from bridge.connections import Outage
from bridge.events import ClientEvent, decode_out
from bridge.readers import StreamReader
from bridge.sessions import SessionResolver

logger = logging.getLogger(__name__)

# Entries per stream per read (the hub's XREAD COUNT).
HUB_READ_COUNT = 1000
# Events buffered per subscriber: a client that falls further behind re-reads from Redis instead of slowing the hub.
CLIENT_QUEUE_SIZE = 1024


class Subscription:
    """One client's view of one key: a bounded buffer that the hub fills and the client drains."""

    __slots__ = ("_buffer", "_ready", "closed", "key", "maxsize", "overflowed")

    def __init__(self, key: str, maxsize: int) -> None:
        self.key = key
        self.maxsize = maxsize
        self.overflowed = False
        self.closed = False
        self._buffer: deque[ClientEvent] = deque()
        self._ready = threading.Event()

    def push(self, events: list[ClientEvent]) -> None:
        """Called by the hub. A client that falls too far behind is marked and re-reads from Redis."""
        if self.overflowed:
            return
        if len(self._buffer) + len(events) > self.maxsize:
            self.overflowed = True
            self._buffer.clear()
        else:
            self._buffer.extend(events)
        self._ready.set()

    def wake(self) -> None:
        self._ready.set()

    def drain(self) -> list[ClientEvent]:
        """Everything buffered, waiting until something is (or a ``wake``: then it may be nothing).

        The wait has no timer of its own: a ``Ticker`` wakes every subscription of the process now and then.
        """
        if not self._buffer and not self.overflowed and not self.closed:
            self._ready.wait()
        self._ready.clear()
        events = list(self._buffer)
        self._buffer.clear()
        return events


class Hub:
    """Fan-out of stream entries to subscribers, with one blocking reader per process."""

    def __init__(
        self,
        reader: StreamReader,
        *,
        block_ms: int = 2000,
        count: int = HUB_READ_COUNT,
        queue_size: int = CLIENT_QUEUE_SIZE,
        sessions: SessionResolver | None = None,
    ) -> None:
        self.reader = reader
        # Turns a session stream's entries into the events they point at (see bridge.sessions).
        self.sessions = sessions
        self.block_ms = block_ms
        self.count = count
        self.queue_size = queue_size
        self._positions: dict[str, str] = {}
        self._subscribers: dict[str, set[Subscription]] = {}
        self._lock = threading.Lock()
        self._changed = threading.Event()
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self.healthy = True
        self.last_error: str | None = None
        self.last_read_at = 0.0
        # Times a subscriber fell too far behind and re-read from Redis.
        self.resyncs = 0

    def resolve(self, key: str, events: list[ClientEvent]) -> list[ClientEvent]:
        """Events as readers get them: a session stream's entries resolved into the events they point at."""
        if self.sessions is None or not events or not keys.is_session_out(key):
            return events
        return self.sessions.resolve(key, events)

    # -- subscribers -------------------------------------------------------------------------------

    def subscribe(self, key: str, after_id: str) -> tuple[Subscription, str]:
        """Watch ``key``; returns the subscription and the id up to which the caller must read by itself.

        Once the hub is stopped (the process is shutting down) the subscription comes back closed: the stream ends
        after its catch-up, and its client resumes on another process instead of waiting here for nothing.
        """
        sub = Subscription(key, self.queue_size)
        if self._stopping.is_set():
            sub.closed = True
            return sub, after_id
        with self._lock:
            new = key not in self._positions
            if new:
                self._positions[key] = after_id
                self._subscribers[key] = set()
            self._subscribers[key].add(sub)
            position = self._positions[key]
            self._count()
        self._start()
        if new:
            self._changed.set()
            self._interrupt()
        return sub, position

    def unsubscribe(self, sub: Subscription) -> None:
        sub.closed = True
        with self._lock:
            subscribers = self._subscribers.get(sub.key)
            if subscribers is None:
                return
            subscribers.discard(sub)
            if not subscribers:
                del self._subscribers[sub.key]
                del self._positions[sub.key]
            self._count()

    def _count(self) -> None:
        # Under the lock: cheap, and exact for the gauges.
        metrics.HUB_KEYS.set(len(self._positions))
        metrics.HUB_SUBSCRIBERS.set(sum(len(s) for s in self._subscribers.values()))

    @property
    def watched_keys(self) -> int:
        return len(self._positions)

    @property
    def subscriber_count(self) -> int:
        with self._lock:
            return sum(len(s) for s in self._subscribers.values())

    # -- the reader --------------------------------------------------------------------------------

    def _start(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="tokenbridge-hub", daemon=True)
                self._thread.start()

    def stop(self, *, timeout_s: float = 5.0) -> None:
        """Stop reading, wake every subscriber (their streams end) and close the reader connection."""
        self._stopping.set()
        self._changed.set()
        self._interrupt()
        with self._lock:
            subscribers = [s for subs in self._subscribers.values() for s in subs]
        for sub in subscribers:
            sub.closed = True
            sub.wake()
        if self._thread is not None:
            self._thread.join(timeout_s)
        self.reader.close()

    def _interrupt(self) -> None:
        self.reader.wake()

    def _run(self) -> None:
        outage = Outage(logger, "Hub read failed", "Hub reads again")
        backoff_s = 0.1  # after a failure that is not Redis being away: a flaw, retried more slowly
        while not self._stopping.is_set():
            try:
                if self._read_once():
                    outage.answered()
                backoff_s = 0.1
                self.healthy = True
            except (redis.ConnectionError, redis.TimeoutError, redis.ResponseError) as exc:
                self.healthy = False
                self.last_error = str(exc)
                self._stopping.wait(outage.failed(exc))
            except Exception:
                self.healthy = False
                logger.exception("Hub read failed; retrying.")
                self._stopping.wait(backoff_s)
                backoff_s = min(backoff_s * 2, 5.0)

    def _read_once(self) -> bool:
        """One read of the watched streams, delivered; False when nothing is watched (Redis was not asked)."""
        self._changed.clear()
        with self._lock:
            streams = dict(self._positions)
        if not streams:
            self._changed.wait(1.0)
            return False
        reply = self.reader.read(streams, count=self.count, block_ms=self.block_ms, interrupt=self._changed)
        self.last_read_at = time.time()
        self._deliver(streams, reply)
        return True

    def _deliver(self, streams: dict[str, str], reply: Any) -> None:
        now = time.time()
        latencies: list[float] = []
        for key, entries in reply or []:
            if not entries:
                continue
            events = self.resolve(key, [decode_out(entry_id, fields) for entry_id, fields in entries])
            with self._lock:
                # Deliver only if nobody re-registered the key from another position meanwhile.
                if self._positions.get(key) != streams[key]:
                    continue
                self._positions[key] = entries[-1][0]
                if not events:
                    continue
                for sub in self._subscribers[key]:
                    sub.push(events)
            _latencies(events, now, latencies)
        if latencies:
            metrics.observe_many(metrics.DELIVERY_LATENCY, latencies)


def _latencies(events: list[ClientEvent], now: float, into: list[float]) -> None:
    """Producer → hub delay of live tokens, once per entry (not per client; replays never reach the hub)."""
    for event in events:
        if event.event == "token":
            ts = orjson.loads(event.data).get("ts")
            if isinstance(ts, int | float):
                into.append(max(0.0, now - ts))

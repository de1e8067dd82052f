"""The write loop: one per worker process, it writes the tokens of every running generation to Redis.

Each generation's token source runs in a thread (a greenlet under gevent) of its own and only appends what it
yields to its generation's inbox. The loop's thread takes what every inbox holds, builds one write per
generation (``GenerationWriter.prepare``) and sends them all in one round trip (one per node on a cluster),
then reads each reply (``GenerationWriter.settle``). The same thread renews the leases of idle generations,
looks for cancellations, and enforces the idle timeout and the maximum duration, at a tick of ``poll_s``.

So a token costs an append and, at most, one wake-up of the loop; no thread waits for its own write, and a
generation's task waits only for its end. While a flush is on the wire the next one fills up: batches grow
with the load, and no write waits for a timer.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import redis

from bridge import scripts
from bridge.errors import ProviderError
from bridge.events import EventType
from bridge.producer import (
    Chunk,
    Delta,
    Finish,
    GenerationWriter,
    Outcome,
    PendingWrite,
    Retry,
    Scheduled,
    TokenSource,
)
from bridge.ticker import StopEvent

logger = logging.getLogger(__name__)

Send = Callable[[list[scripts.Call]], list[Any]]

_END = object()
# Scheduled chunks due this soon are produced with those due now: one write for many streams' tokens, not one
# wake-up and flush per token (a model's pacing is this much coarser; each token is stamped when produced).
_SCHEDULE_AHEAD_S = 0.005


@dataclass(slots=True)
class _Failure:
    error: BaseException


class WriteLoop:
    """Writes the tokens of every generation ``run`` is driving, together. Safe for threads and greenlets."""

    def __init__(self, client: redis.Redis | None, *, send: Send | None = None) -> None:
        self.client = client
        self._send: Send = send or (lambda calls: scripts.run_batch(client, calls))  # type: ignore[arg-type]
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._running: set[_Running] = set()
        self._dirty: set[_Running] = set()
        self._retrying: set[_Running] = set()
        # Scheduled answers (``Scheduled``): (when the next chunk is due, order, the generation).
        self._scheduled: list[tuple[float, int, _Running]] = []
        self._order = itertools.count()
        self._thread: threading.Thread | None = None
        self._next_tick = 0.0
        # Flushes and writes sent so far: writes / flushes is the batching achieved.
        self.flushes = 0
        self.writes = 0

    # -- a generation's side -----------------------------------------------------------------------

    def run(
        self,
        writer: GenerationWriter,
        source: TokenSource | Scheduled,
        *,
        flush_window_s: float = 0.0,
        poll_s: float = 0.2,
        idle_timeout_s: float | None = None,
        max_duration_s: float | None = None,
        join_timeout_s: float = 5.0,
    ) -> Outcome:
        """Run ``source`` and write what it yields until a terminal entry, cancellation or fencing.

        A ``TokenSource`` runs in a thread of its own; a ``Scheduled`` answer is produced by the loop itself, each
        chunk when it is due.

        A source silent for ``idle_timeout_s`` ends the generation with ``provider_timeout``; one that runs past
        ``max_duration_s`` with ``max_duration``. Tokens that arrive within ``flush_window_s`` of the loop's
        wake-up share its write. If the caller is interrupted (the worker shuts down), or Redis stays away for
        longer than the writer retries, the lease is released so that a new attempt can start at once.
        """
        running = _Running(self, writer, flush_window_s, poll_s, idle_timeout_s, max_duration_s)
        with self._lock:
            self._running.add(running)
            self._next_tick = min(self._next_tick, time.monotonic() + poll_s) if self._thread else 0.0
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="tokenbridge-writes", daemon=True)
                self._thread.start()
        running.start(source)
        try:
            running.done.wait()  # no timer: the loop ends every generation it holds, or fails it
            if running.error is not None:
                raise running.error
            assert running.outcome is not None
            return running.outcome
        finally:
            running.stop.set()
            with self._lock:
                self._running.discard(running)
                self._dirty.discard(running)
                self._retrying.discard(running)
            if running.outcome is None:
                # Interrupted, or Redis gone for longer than the writer retries: hand the generation back.
                writer.release()
            running.join(join_timeout_s)

    def mark(self, running: _Running) -> None:
        """``running`` has something new to write: wake the loop (once per turn, however many tokens come)."""
        with self._lock:
            new = running not in self._dirty
            if new:
                self._dirty.add(running)
        if new:
            self._wake.set()

    def schedule(self, running: _Running, due: float) -> None:
        """Wake the loop when ``running``'s next scheduled chunk is due."""
        with self._lock:
            earliest = not self._scheduled or due < self._scheduled[0][0]
            heapq.heappush(self._scheduled, (due, next(self._order), running))
        if earliest:
            self._wake.set()

    # -- the loop's thread -------------------------------------------------------------------------

    def _loop(self) -> None:
        try:
            while True:
                with self._lock:
                    if not self._running:
                        self._thread = None
                        return
                    timeout = self._timeout()
                self._wake.wait(timeout)
                self._wake.clear()
                try:
                    self._turn()
                except Exception as exc:
                    # A bug: the generations of this turn fail rather than wait for ever; the loop goes on.
                    logger.exception("The write loop's turn failed.")
                    self._fail_all(exc)
        except BaseException as exc:
            # Killed (the worker is going away): nobody may wait for a write that will not come.
            with self._lock:
                self._thread = None
            logger.warning("The write loop stopped (%r); failing the generations it held.", exc)
            self._fail_all(redis.ConnectionError(f"the write loop stopped: {exc!r}"))

    def _fail_all(self, error: BaseException) -> None:
        with self._lock:
            stranded = list(self._running)
        for running in stranded:
            running.fail(error)

    def _timeout(self) -> float:
        """Until the next tick, the next retry or the next scheduled chunk (under the lock)."""
        due = min([self._next_tick, *(r.retry_at for r in self._retrying)])
        if self._scheduled:
            due = min(due, self._scheduled[0][0])
        return max(0.0, due - time.monotonic())

    def _turn(self) -> None:
        """One turn: every generation with something to write (or due at the tick) writes, in one round trip."""
        window = max((r.flush_window_s for r in self._dirty), default=0.0)
        if window > 0:
            time.sleep(window)  # let the tokens that follow closely join this write
        now = time.monotonic()
        for running in self._produce_due(now):
            self._dirty.add(running)
        with self._lock:
            # A write waiting out its backoff stays in ``_retrying`` until it is due, however many tokens mark it
            # meanwhile: taken out early, it would never be sent again.
            retries = {r for r in self._retrying if r.retry_at <= now}
            self._retrying -= retries
            ready, self._dirty = self._dirty | retries, set()
            if now >= self._next_tick:
                self._next_tick = now + min((r.poll_s for r in self._running), default=1.0)
                ready |= {r for r in self._running if r.due(now)}
        writes = [r for r in ready if r.next_write(now)]
        if not writes:
            return
        try:
            replies = self._send([r.pending.call for r in writes])  # type: ignore[union-attr]
        except Exception as exc:
            replies = [exc] * len(writes)
        self.flushes += 1
        self.writes += len(writes)
        for running, reply in zip(writes, replies, strict=True):
            try:
                running.settle(reply, time.monotonic())
            except Exception as exc:
                running.fail(exc)

    def _produce_due(self, now: float) -> list[_Running]:
        """The scheduled chunks due by ``now``, appended to their generations' inboxes; those generations."""
        horizon = now + _SCHEDULE_AHEAD_S
        with self._lock:
            due = []
            while self._scheduled and self._scheduled[0][0] <= horizon:
                due.append(heapq.heappop(self._scheduled)[2])
        produced = []
        for running in due:
            if running.outcome is not None or running.error is not None:
                continue
            following = running.produce(horizon)
            produced.append(running)
            if following is not None:
                self.schedule(running, following)
        return produced

    def retry(self, running: _Running) -> None:
        with self._lock:
            self._retrying.add(running)
        self._wake.set()


class _Running:
    """One generation that the loop drives: its source's inbox and where its writes stand."""

    def __init__(
        self,
        loop: WriteLoop,
        writer: GenerationWriter,
        flush_window_s: float,
        poll_s: float,
        idle_timeout_s: float | None,
        max_duration_s: float | None,
    ) -> None:
        self.loop = loop
        self.writer = writer
        self.flush_window_s = flush_window_s
        self.poll_s = poll_s
        self.idle_timeout_s = idle_timeout_s
        self.max_duration_s = max_duration_s
        self.inbox: deque[Any] = deque()
        self.stop = StopEvent()  # a source's timed waits on it arm no timer each
        self.done = threading.Event()
        self.outcome: Outcome | None = None
        self.error: BaseException | None = None
        # The write on its way (or waiting to be sent again), and when to send it again.
        self.pending: PendingWrite | None = None
        self.retry_at = 0.0
        self.completion_tokens = 0
        self.started = self.last_item = self.last_write = time.monotonic()
        self._thread: threading.Thread | None = None
        # A scheduled answer: its chunks, when it started, and the next chunk (its due time after the start).
        self._chunks: Iterator[tuple[float, Chunk]] = iter(())
        self._origin = 0.0
        self._next: tuple[float, Chunk] | None = None

    # -- the source (its own thread) ---------------------------------------------------------------

    def start(self, source: TokenSource | Scheduled) -> None:
        if isinstance(source, Scheduled):
            self._chunks = iter(source.chunks)
            self._origin = time.monotonic()
            self._next = next(self._chunks, None)
            self.loop.schedule(self, self._origin + (self._next[0] if self._next else 0.0))
            return
        name = f"source-{self.writer.generation_id}"
        self._thread = threading.Thread(target=self._produce, args=(source,), name=name, daemon=True)
        self._thread.start()

    def produce(self, now: float) -> float | None:
        """A scheduled answer: append the chunks due by ``now``; when the next one is due (None: all produced)."""
        while self._next is not None and self._origin + self._next[0] <= now:
            chunk = self._next[1]
            if isinstance(chunk, Finish):
                self.inbox.append(chunk)
                self.inbox.append(_END)
                self._next = None
                return None
            self.inbox.append((time.time(), chunk))
            self._next = next(self._chunks, None)
        if self._next is None:
            self.inbox.append(Finish())  # an answer that ended without saying how
            self.inbox.append(_END)
            return None
        return self._origin + self._next[0]

    def join(self, timeout_s: float) -> None:
        if self._thread is not None:
            self._thread.join(timeout_s)

    def _put(self, item: Any) -> None:
        self.inbox.append(item)
        self.loop.mark(self)

    def _produce(self, source: TokenSource) -> None:
        try:
            for chunk in source(self.stop):
                if self.stop.is_set():
                    return
                if isinstance(chunk, Finish):
                    self._put(chunk)
                    return
                self._put((time.time(), chunk))
            if not self.stop.is_set():
                self._put(Finish())
        except Exception as exc:
            self._put(_Failure(exc))
        finally:
            self._put(_END)

    # -- the loop's side ---------------------------------------------------------------------------

    def due(self, now: float) -> bool:
        """At a tick: whether this generation must look at its limits or renew its lease."""
        return self.outcome is None and self.pending is None and now - self.last_write >= self.poll_s

    def next_write(self, now: float) -> bool:
        """Build the next write, if there is one to send now: a limit reached, what the source yielded, or a
        heartbeat when idle for ``poll_s``. A write waiting to be sent again is sent as it was."""
        if self.outcome is not None:
            return False
        if self.pending is not None:
            return self.retry_at <= now  # sent again once its backoff is over
        limit = _limit_reached(now, self.started, self.last_item, self.idle_timeout_s, self.max_duration_s)
        if limit is not None:
            logger.warning("Generation %s: %s.", self.writer.generation_id, limit[1])
            self.pending = self.writer.prepare([(EventType.ERROR.value, {"code": limit[0], "message": limit[1]})])
            return True
        if self.inbox:
            self.last_item = now
            entries, self.completion_tokens = _take(self.inbox, self.completion_tokens)
            if entries:
                self.pending = self.writer.prepare(entries)
                return True
        if now - self.last_write >= self.poll_s:
            self.pending = self.writer.prepare([])
            return True
        return False

    def settle(self, reply: Any, now: float) -> None:
        """Read the reply of ``pending``; the generation ends, goes on, or sends its write again."""
        assert self.pending is not None
        settled = self.writer.settle(self.pending, reply)
        if isinstance(settled, Retry):
            self._again(reply, now)
            return
        if isinstance(settled, PendingWrite):
            self.pending, self.retry_at = settled, now
            self.loop.retry(self)
            return
        ended = self.pending.ends
        self.pending = None
        self.last_write = now
        self.writer.outage.answered()
        if settled is not Outcome.WRITTEN or ended:
            self._end(_outcome(settled, self.writer))
        elif self.inbox:
            self.loop.mark(self)  # more came while this write was on the wire

    def _again(self, error: BaseException, now: float) -> None:
        """Redis could not answer: the same write again after a backoff, for up to the writer's ``retry_s``."""
        outage = self.writer.outage
        if outage.gives_up(self.writer.retry_s, now):
            self.fail(error)
            return
        self.retry_at = now + outage.failed(error)
        self.loop.retry(self)

    def _end(self, outcome: Outcome) -> None:
        self.outcome = outcome
        self.stop.set()
        self.done.set()

    def fail(self, error: BaseException) -> None:
        """The generation cannot go on here: its task raises ``error`` (and releases the lease)."""
        if self.outcome is None and self.error is None:
            self.error = error
            self.stop.set()
            self.done.set()


def pump(
    writer: GenerationWriter,
    source: TokenSource,
    *,
    loop: WriteLoop | None = None,
    flush_window_s: float = 0.0,
    poll_s: float = 0.2,
    idle_timeout_s: float | None = None,
    max_duration_s: float | None = None,
    join_timeout_s: float = 5.0,
) -> Outcome:
    """``WriteLoop.run`` on ``loop``, or on a loop of its own (one generation: tests, tools)."""
    return (loop or WriteLoop(writer.client)).run(
        writer,
        source,
        flush_window_s=flush_window_s,
        poll_s=poll_s,
        idle_timeout_s=idle_timeout_s,
        max_duration_s=max_duration_s,
        join_timeout_s=join_timeout_s,
    )


def _terminal_entry(item: Finish | _Failure, completion_tokens: int) -> tuple[str, dict[str, Any]]:
    if isinstance(item, _Failure):
        error = item.error
        code = error.code if isinstance(error, ProviderError) else "provider_error"
        return EventType.ERROR.value, {"code": code, "message": str(error) or type(error).__name__}
    usage = {"prompt_tokens": 0, "completion_tokens": completion_tokens, **item.usage}
    return EventType.DONE.value, {"finish_reason": item.finish_reason, "usage": usage, **item.extra}


def _take(inbox: deque[Any], completion_tokens: int) -> tuple[list[tuple[str, dict[str, Any]]], int]:
    """The entries of everything waiting in ``inbox``, up to the end of the source; and the tokens so far."""
    entries: list[tuple[str, dict[str, Any]]] = []
    while inbox:
        item = inbox.popleft()
        if item is _END:
            break
        if isinstance(item, Finish | _Failure):
            entries.append(_terminal_entry(item, completion_tokens))
            break
        ts, content = item
        if isinstance(content, Delta):
            entries.append((content.event, {**content.data, "ts": ts}))
            continue
        completion_tokens += 1
        entries.append((EventType.TOKEN.value, {"content": content, "ts": ts}))
    return entries, completion_tokens


def _limit_reached(
    now: float, started: float, last_item: float, idle_timeout_s: float | None, max_duration_s: float | None
) -> tuple[str, str] | None:
    if max_duration_s is not None and now - started > max_duration_s:
        return "max_duration", f"The generation ran longer than {max_duration_s:g} s."
    if idle_timeout_s is not None and now - last_item > idle_timeout_s:
        return "provider_timeout", f"The model sent nothing for {idle_timeout_s:g} s."
    return None


def _outcome(result: Outcome, writer: GenerationWriter) -> Outcome:
    """How the attempt ended, from the reply of its last write (an end written at maxmemory is a finish)."""
    if result is Outcome.CANCELLED:
        return Outcome.CANCELLED
    if result is Outcome.FENCED:
        logger.warning("Generation %s attempt %s was fenced off.", writer.generation_id, writer.attempt)
        return Outcome.FENCED
    if result is Outcome.LOST:
        # The lease is given up so that the consumer starts a new attempt at once (readers get `restart`).
        logger.warning(
            "Generation %s attempt %s lost acknowledged writes (Redis failed over); restarting it.",
            writer.generation_id,
            writer.attempt,
        )
        writer.release()
        return Outcome.LOST
    return Outcome.FINISHED

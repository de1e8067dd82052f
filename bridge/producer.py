"""Writing a generation's tokens to its ``:raw`` stream: claimed, fenced by attempt, coalesced.

``GenerationWriter`` owns the Redis side (claim an attempt, write a batch, heartbeat). ``pump`` runs a
token source in a thread and feeds the writer: tokens waiting when a write starts (and those that arrive
within ``flush_window_s`` of the first) are written together, and cancellation is noticed at each write or
heartbeat. ``WriteBatcher`` sends the writes of every generation of a process to Redis together: a token
costs no round trip of its own, however many generations run.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import orjson
import redis

from bridge import scripts
from bridge.connections import UNAVAILABLE
from bridge.errors import ProviderError
from bridge.events import TERMINAL_EVENTS, EventType
from bridge.memory import OUT_OF_MEMORY_CODE, is_out_of_memory
from bridge.scripts import Claim as Claim  # re-exported: the claim refusals callers see
from bridge.ticker import Ticker

logger = logging.getLogger(__name__)


class WriteResult(Enum):
    WRITTEN = "written"
    FENCED = "fenced"
    CANCELLED = "cancelled"
    # Redis refused the write at maxmemory; the generation was ended with ``redis_out_of_memory`` instead.
    OUT_OF_MEMORY = "out_of_memory"
    # An earlier write of this attempt is not in Redis any more (lost in a failover): the attempt must restart.
    LOST = "lost"


@dataclass(slots=True)
class Finish:
    """The end of a token source: why it stopped and what it used."""

    finish_reason: str = "stop"
    usage: dict[str, int] = field(default_factory=dict)
    # More fields of the ``done`` event (``cached`` for an answer from the response cache).
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Delta:
    """Output of a model that is not answer text: a ``reasoning`` delta or a ``tool_call`` delta.

    ``data`` is the event's data without ``seq`` and ``ts`` (``{"content"}`` for reasoning; ``{"index", "id",
    "name", "arguments"}`` for a tool call, ``id`` and ``name`` only in a call's first delta).
    """

    event: str
    data: dict[str, Any]


Chunk = str | Delta | Finish
TokenSource = Callable[[threading.Event], Iterator[Chunk]]


class _Pending:
    __slots__ = ("call", "done", "error", "result")

    def __init__(self, call: scripts.Call) -> None:
        self.call = call
        self.done = threading.Event()
        self.result: Any = None
        self.error: BaseException | None = None


class WriteBatcher:
    """Sends the script calls of every generation of a process to Redis together, one round trip per flush.

    A writer hands its call over and waits for the result; one flushing thread sends everything handed over
    since its last flush in one pipeline (one per node on a cluster). While a flush is on the wire the next
    one fills up, so batches grow with the load and no write ever waits for a timer.

    A writer waits without a timer of its own (a gevent timer per write cost a worker a sixth of its CPU):
    every flush ends within the client's socket and pool timeouts, and a flushing thread that dies fails
    every call it held.
    """

    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self._pending: list[_Pending] = []
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None
        self._closed = False
        # Flushes and calls sent so far: calls / flushes is the batching achieved.
        self.flushes = 0
        self.calls = 0

    def run(self, call: scripts.Call) -> Any:
        """Run ``call`` with the next flush; returns its result or raises its error."""
        pending = _Pending(call)
        with self._lock:
            if self._closed:
                raise redis.ConnectionError("the write batcher is closed")
            self._pending.append(pending)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._flush_loop, name="tokenbridge-writes", daemon=True)
                self._thread.start()
        self._ready.set()
        pending.done.wait()  # bounded: see the class's docstring
        if pending.error is not None:
            raise pending.error
        return pending.result

    def close(self) -> None:
        """Stop the flushing thread once it has sent what it holds."""
        with self._lock:
            self._closed = True
        self._ready.set()

    def _flush_loop(self) -> None:
        batch: list[_Pending] = []
        try:
            while True:
                self._ready.wait()
                with self._lock:
                    batch, self._pending = self._pending, []
                    self._ready.clear()
                    if not batch:
                        if self._closed:
                            return
                        continue
                self._flush(batch)
                batch = []
        except BaseException as exc:
            # Killed (the worker is going away): the thread ends here, and
            # nobody may wait for a flush that will not come.
            with self._lock:
                orphans, self._pending = batch + self._pending, []
                self._thread = None  # the next call starts a new one
            logger.warning("The write batcher stopped (%r); failing %s waiting writes.", exc, len(orphans))
            for pending in orphans:
                if not pending.done.is_set():
                    pending.error = redis.ConnectionError(f"the write batcher stopped: {exc!r}")
                    pending.done.set()

    def _flush(self, batch: list[_Pending]) -> None:
        try:
            results = scripts.run_batch(self.client, [pending.call for pending in batch])
        except Exception as exc:
            results = [exc] * len(batch)
        self.flushes += 1
        self.calls += len(batch)
        for pending, result in zip(batch, results, strict=True):
            if isinstance(result, BaseException):
                pending.error = result
            else:
                pending.result = result
            pending.done.set()


class GenerationWriter:
    """The producer side of one generation: claims an attempt, then writes only while that attempt is current.

    Writes survive a short Redis outage: a write that fails on the connection is retried with backoff for
    up to ``retry_s``; each write carries its batch number, so one whose reply was lost is not applied twice.
    The lease is renewed by a write (or heartbeat) once a third of ``lease_ms`` has passed since the last
    renewal, not by every write. With a ``batcher``, writes go to Redis together with those of the other
    generations of the process.
    """

    def __init__(
        self,
        client: redis.Redis,
        generation_id: str,
        *,
        lease_ms: int,
        max_length: int,
        retry_s: float = 30.0,
        batcher: WriteBatcher | None = None,
    ) -> None:
        self.client = client
        self.generation_id = generation_id
        self.lease_ms = lease_ms
        self.max_length = max_length
        self.retry_s = retry_s
        self.batcher = batcher
        self.attempt = 0
        self.batch = 0
        self._renewed_at = 0.0
        # The last write raised: it may not have been applied (see ``_send``).
        self._unsure = False
        # What this writer wrote, for metrics: tokens, and the code of an error entry.
        self.tokens = 0
        self.error_code: str | None = None

    def claim(self, *, reason: str = "retry") -> int:
        """Start a new attempt. Returns its number (1, 2, …) or a negative ``Claim`` when refused."""
        claimed_at = time.monotonic()
        result: int = self._retrying(
            lambda: scripts.claim_attempt(
                self.client, self.generation_id, lease_ms=self.lease_ms, max_length=self.max_length, reason=reason
            )
        )
        if result > 0:
            self.attempt = result
            self.batch = 0
            self._renewed_at = claimed_at
        return result

    def write(self, entries: list[tuple[str, dict[str, Any]]]) -> WriteResult:
        """Append entries in one round trip (renewing the lease when due), unless fenced or cancelled."""
        if entries:
            self.batch += 1
        now = time.monotonic()
        renew = now - self._renewed_at >= self.lease_ms / 3000
        args: list[Any] = [self.attempt, self.lease_ms, self.max_length, self.batch if entries else 0, int(renew)]
        for event_type, data in entries:
            args.append(event_type)
            args.append(orjson.dumps(data))
        try:
            result = self._send(args)
        except redis.ResponseError as exc:
            if not is_out_of_memory(exc) or (entries and entries[-1][0] in TERMINAL_EVENTS):
                raise
            return self._end_out_of_memory()
        if renew and result is scripts.Write.WRITTEN:
            self._renewed_at = now
        if result is scripts.Write.WRITTEN:
            self._count(entries)
        if result is scripts.Write.FENCED:
            return WriteResult.FENCED
        if result is scripts.Write.CANCELLED:
            return WriteResult.CANCELLED
        if result is scripts.Write.GAP:
            return WriteResult.LOST
        return WriteResult.WRITTEN  # a repeat was written by the first try

    def _count(self, entries: list[tuple[str, dict[str, Any]]]) -> None:
        """What a write that was applied wrote, for metrics: its tokens, and the code of an error."""
        for event_type, data in entries:
            if event_type == EventType.TOKEN.value:
                self.tokens += 1
            elif event_type == EventType.ERROR.value:
                self.error_code = str(data.get("code"))

    def _send(self, args: list[Any]) -> scripts.Write:
        """Run the write; after a write that failed, a hole of one batch is that write, not a lost one."""
        unsure, self._unsure = self._unsure, False
        try:
            result = scripts.decode_write(
                self._retrying(lambda: self._run(scripts.write_call(self.generation_id, args)))
            )
            if result is scripts.Write.GAP and unsure:
                # The write that raised before this one was never applied: this one takes its number.
                self.batch -= 1
                args[3] = self.batch
                call = scripts.write_call(self.generation_id, args)
                result = scripts.decode_write(self._retrying(lambda: self._run(call)))
        except Exception:
            self._unsure = True
            raise
        return result

    def _end_out_of_memory(self) -> WriteResult:
        """End the generation with ``redis_out_of_memory``: a refused write wrote nothing, and an end is let
        through at maxmemory (see ``scripts.WRITE``), so readers get every event before it, then the error."""
        logger.warning(
            "Generation %s: Redis refused a write at maxmemory; ending it.",
            self.generation_id,
            extra={"generation_id": self.generation_id},
        )
        message = "The stream store ran out of memory while this generation was running."
        result = self.write([(EventType.ERROR.value, {"code": OUT_OF_MEMORY_CODE, "message": message})])
        return WriteResult.OUT_OF_MEMORY if result is WriteResult.WRITTEN else result

    def _run(self, call: scripts.Call) -> Any:
        if self.batcher is not None:
            return self.batcher.run(call)
        return scripts.run(self.client, call.source, call.keys, call.args)

    def heartbeat(self) -> WriteResult:
        """Renew the lease and check for cancellation without writing a token."""
        return self.write([])

    def release(self) -> None:
        """Give the lease up at once (the worker is going away), so that a new attempt need not wait for it."""
        try:
            scripts.release_lease(self.client, self.generation_id, self.attempt)
        except redis.RedisError as exc:
            logger.warning("Generation %s could not release its lease: %s", self.generation_id, exc)

    def _retrying(self, call: Callable[[], Any]) -> Any:
        deadline = time.monotonic() + self.retry_s
        delay_s = 0.05
        while True:
            try:
                return call()
            except UNAVAILABLE as exc:
                if time.monotonic() + delay_s > deadline:
                    raise
                logger.warning(
                    "Generation %s: Redis unavailable (%s); retrying in %.2fs.",
                    self.generation_id,
                    exc,
                    delay_s,
                    extra={"generation_id": self.generation_id},
                )
                time.sleep(delay_s)
                delay_s = min(delay_s * 2, 2.0)


class Outcome(Enum):
    FINISHED = "finished"
    CANCELLED = "cancelled"
    FENCED = "fenced"
    LOST = "lost"


_END = object()


@dataclass(slots=True)
class _Failure:
    error: BaseException


def _terminal_entry(item: Finish | _Failure, completion_tokens: int) -> tuple[str, dict[str, Any]]:
    if isinstance(item, _Failure):
        error = item.error
        code = error.code if isinstance(error, ProviderError) else "provider_error"
        return EventType.ERROR.value, {"code": code, "message": str(error) or type(error).__name__}
    usage = {"prompt_tokens": 0, "completion_tokens": completion_tokens, **item.usage}
    return EventType.DONE.value, {"finish_reason": item.finish_reason, "usage": usage, **item.extra}


def with_retries(
    source: TokenSource,
    *,
    retries: int,
    base_delay_s: float,
    generation_id: str,
    on_retry: Callable[[ProviderError], None] | None = None,
) -> TokenSource:
    """Retry a source that fails before its first token (``ProviderError`` with ``retryable``), with backoff."""

    def run(stop: threading.Event) -> Iterator[Chunk]:
        failures = 0
        while True:
            produced = False
            try:
                for chunk in source(stop):
                    produced = True
                    yield chunk
                return
            except ProviderError as exc:
                if produced or not exc.retryable or failures >= retries or stop.is_set():
                    raise
                delay_s = min(base_delay_s * 2**failures, 30.0) * random.uniform(0.8, 1.2)
                if exc.retry_after_s is not None:
                    delay_s = max(delay_s, min(exc.retry_after_s, 60.0))
                failures += 1
                if on_retry is not None:
                    on_retry(exc)
                logger.warning(
                    "Generation %s: provider failed before its first token (%s); retry %s/%s in %.2fs.",
                    generation_id,
                    exc,
                    failures,
                    retries,
                    delay_s,
                    extra={"generation_id": generation_id},
                )
                if stop.wait(delay_s):
                    return

    return run


def pump(
    writer: GenerationWriter,
    source: TokenSource,
    *,
    flush_window_s: float = 0.0,
    poll_s: float = 0.2,
    idle_timeout_s: float | None = None,
    max_duration_s: float | None = None,
    join_timeout_s: float = 5.0,
) -> Outcome:
    """Run ``source`` and write what it yields until a terminal entry, cancellation or fencing.

    A source silent for ``idle_timeout_s`` ends the generation with ``provider_timeout``; one that runs past
    ``max_duration_s`` with ``max_duration``. If the pump itself is interrupted (the worker shuts down), the
    lease is released so that a new attempt can start at once.
    """
    source_thread = _SourceThread(source, name=f"source-{writer.generation_id}")
    source_thread.start()
    ticker = Ticker.every(poll_s)
    ticker.add(source_thread.wake.set)
    loop = _PumpLoop(
        writer,
        source_thread,
        flush_window_s=flush_window_s,
        poll_s=poll_s,
        idle_timeout_s=idle_timeout_s,
        max_duration_s=max_duration_s,
    )
    outcome: Outcome | None = None
    try:
        while outcome is None:
            outcome = loop.step()
        return outcome
    finally:
        source_thread.stop.set()
        ticker.discard(source_thread.wake.set)
        if outcome is None:
            # Interrupted (worker shutdown, Redis gone for longer than the writer retries): hand the generation back.
            writer.release()
        source_thread.join(join_timeout_s)


class _SourceThread:
    """A token source run in a thread of its own; what it yields waits in ``inbox``, ending with ``_END``."""

    def __init__(self, source: TokenSource, *, name: str) -> None:
        self.source = source
        self.inbox: deque[Any] = deque()
        # Set by the source at each item, and by the ticker every ``poll_s`` (the idle checks' wake-up).
        self.wake = threading.Event()
        self.stop = threading.Event()
        self._thread = threading.Thread(target=self._produce, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def join(self, timeout_s: float) -> None:
        self._thread.join(timeout_s)

    def _put(self, item: Any) -> None:
        self.inbox.append(item)
        self.wake.set()

    def _produce(self) -> None:
        try:
            for chunk in self.source(self.stop):
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


class _PumpLoop:
    """One turn at a time of ``pump``: write what the source yielded, or check the limits and the lease."""

    def __init__(
        self,
        writer: GenerationWriter,
        source: _SourceThread,
        *,
        flush_window_s: float,
        poll_s: float,
        idle_timeout_s: float | None,
        max_duration_s: float | None,
    ) -> None:
        self.writer = writer
        self.source = source
        self.flush_window_s = flush_window_s
        self.poll_s = poll_s
        self.idle_timeout_s = idle_timeout_s
        self.max_duration_s = max_duration_s
        self.completion_tokens = 0
        self.started = self.last_item = self.last_write = time.monotonic()

    def step(self) -> Outcome | None:
        """One wake-up; returns the outcome once the generation ended (or this attempt was fenced off)."""
        limit = _limit_reached(time.monotonic(), self.started, self.last_item, self.idle_timeout_s, self.max_duration_s)
        if limit is not None:
            logger.warning("Generation %s: %s.", self.writer.generation_id, limit[1])
            result = self.writer.write([(EventType.ERROR.value, {"code": limit[0], "message": limit[1]})])
            return _outcome(result, self.writer)
        inbox = self.source.inbox
        if not inbox:
            self.source.wake.wait()  # no timer per wait: the ticker sets it every poll_s
            self.source.wake.clear()
        if not inbox:
            return self._idle()
        return self._write_waiting()

    def _idle(self) -> Outcome | None:
        """Nothing came: renew the lease when due and look for a cancellation."""
        if time.monotonic() - self.last_write < self.poll_s:
            return None
        result = self.writer.heartbeat()
        self.last_write = time.monotonic()
        return None if result is WriteResult.WRITTEN else _outcome(result, self.writer)

    def _write_waiting(self) -> Outcome | None:
        self.last_item = time.monotonic()
        if self.flush_window_s > 0:
            time.sleep(self.flush_window_s)  # let the tokens that follow closely join this write
        entries, self.completion_tokens = _take(self.source.inbox, self.completion_tokens)
        if not entries:
            return None
        result = self.writer.write(entries)
        self.last_write = time.monotonic()
        if result is not WriteResult.WRITTEN or entries[-1][0] in TERMINAL_EVENTS:
            return _outcome(result, self.writer)
        return None


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


def _outcome(result: WriteResult, writer: GenerationWriter) -> Outcome:
    if result is WriteResult.CANCELLED:
        return Outcome.CANCELLED
    if result is WriteResult.FENCED:
        logger.warning("Generation %s attempt %s was fenced off.", writer.generation_id, writer.attempt)
        return Outcome.FENCED
    if result is WriteResult.LOST:
        # The lease is given up so that the consumer starts a new attempt at once (readers get `restart`).
        logger.warning(
            "Generation %s attempt %s lost acknowledged writes (Redis failed over); restarting it.",
            writer.generation_id,
            writer.attempt,
        )
        writer.release()
        return Outcome.LOST
    return Outcome.FINISHED

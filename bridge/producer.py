"""Writing a generation's tokens to its ``:raw`` stream: claimed, fenced by attempt, numbered.

``GenerationWriter`` owns the Redis side of one generation (claim an attempt, build a write and read its
reply, heartbeat). ``bridge.write_loop`` drives the token sources of a whole process and sends their writes
together. The chunks a token source yields (``Chunk``) and ``with_retries`` are here too.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from enum import Enum, StrEnum
from typing import Any

import orjson
import redis

from bridge import scripts
from bridge.connections import UNAVAILABLE, Outage
from bridge.errors import ProviderError
from bridge.events import TERMINAL_EVENTS, EventType
from bridge.memory import OUT_OF_MEMORY_CODE, is_out_of_memory
from bridge.scripts import Status

logger = logging.getLogger(__name__)


class Outcome(StrEnum):
    """What happened, one type all the way: a write's settled reply (``GenerationWriter.settle``), how an attempt
    ended (``WriteLoop.run``), and a task's result (what Celery and Flower show)."""

    # A write went through: the attempt goes on.
    WRITTEN = "written"
    # How an attempt ended.
    FINISHED = "finished"
    CANCELLED = "cancelled"
    FENCED = "fenced"  # another attempt is current, or the generation was ended for it
    # An earlier write of this attempt is not in Redis any more (lost in a failover): the attempt must restart.
    LOST = "lost"
    # Redis refused a write at maxmemory; the generation was ended with ``redis_out_of_memory`` instead.
    OUT_OF_MEMORY = "out_of_memory"
    # A task that ran no attempt.
    DEFERRED = "deferred"  # its model is at its concurrency limit: Celery sends the task again
    INVALID = "failed"  # its request cannot run: the generation ended with ``invalid_request``
    SKIPPED_EXTERNAL = "skipped:external"  # fed by an external producer, never by a task
    SKIPPED_UNKNOWN = "skipped:unknown"  # no such generation (any more)
    SKIPPED_FINISHED = "skipped:finished"  # it has ended (a copy of its task)
    SKIPPED_HELD = "skipped:held"  # a live attempt runs it (a copy of its task)


# The outcome of a task whose claim was refused.
NOT_STARTED = {
    Status.UNKNOWN: Outcome.SKIPPED_UNKNOWN,
    Status.FINISHED: Outcome.SKIPPED_FINISHED,
    Status.HELD: Outcome.SKIPPED_HELD,
}


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


@dataclass(frozen=True, slots=True)
class Scheduled:
    """An answer that nothing but the clock paces (the built-in models): each chunk with the time it is due, in
    seconds after the start, in order, the last one a ``Finish``. A write loop produces it itself, on time, with
    no thread of its own (``bridge.write_loop``)."""

    chunks: Iterator[tuple[float, Chunk]]


@dataclass(slots=True)
class PendingWrite:
    """A write that ``GenerationWriter.prepare`` built, waiting for its reply (``GenerationWriter.settle``)."""

    call: scripts.Call
    entries: list[tuple[str, dict[str, Any]]]
    # When it was built (monotonic): the lease counts as renewed from then, if ``renew``.
    at: float
    renew: bool
    # The error entry that replaced a write Redis refused at maxmemory: written, it ends the generation.
    out_of_memory: bool = False

    @property
    def ends(self) -> bool:
        """Whether this write ends the generation (its last entry is terminal)."""
        return bool(self.entries) and self.entries[-1][0] in TERMINAL_EVENTS


class Retry(Enum):
    """``GenerationWriter.settle``'s answer to a reply that Redis could not give (send the same write again)."""

    UNAVAILABLE = "unavailable"


class GenerationWriter:
    """The producer side of one generation: claims an attempt, then writes only while that attempt is current.

    A write is built (``prepare``), sent, and its reply read (``settle``): alone with ``write``, or with the writes
    of every generation of the process by a ``bridge.write_loop.WriteLoop``. Writes survive a short Redis outage:
    one that fails on the connection is sent again, the same, with backoff for up to ``retry_s``; each write
    carries its batch number, so one whose reply was lost is not applied twice. The lease is renewed by a write
    (or heartbeat) once a third of ``lease_ms`` has passed since the last renewal, not by every write.
    """

    def __init__(
        self,
        client: redis.Redis,
        generation_id: str,
        *,
        lease_ms: int,
        max_length: int,
        retry_s: float = 30.0,
        worker: str = "",
    ) -> None:
        self.client = client
        self.generation_id = generation_id
        # This process's name in ``llm:workers`` ('' outside a worker), kept with each attempt it claims.
        self.worker = worker
        self.lease_ms = lease_ms
        self.max_length = max_length
        self.retry_s = retry_s
        self.attempt = 0
        # The generation's stored request (JSON), as the last claim read it.
        self.request: str | None = None
        self.batch = 0
        self._renewed_at = 0.0
        # The last write failed: it may not have been applied (see ``settle``).
        self._unsure = False
        # The tries while Redis cannot answer, and what is logged of them.
        self.outage = Outage(
            logger,
            f"Generation {generation_id}: Redis unavailable",
            f"Generation {generation_id}: Redis answers again",
            first_s=0.05,
            extra={"generation_id": generation_id},
        )
        # What this writer wrote, for metrics: tokens, and the code of an error entry.
        self.tokens = 0
        self.error_code: str | None = None

    def claim(self, *, reason: str = "retry", check_first: Sequence[str] = ()) -> Status:
        """Start a new attempt: ``CLAIMED`` (``attempt`` is its number, 1, 2, …), or why not (``UNKNOWN``,
        ``FINISHED``, ``HELD``; ``CHECK_FIRST`` for a model in ``check_first``); ``request`` is then the stored
        request."""
        claimed_at = time.monotonic()
        claimed: scripts.Claimed = self._retrying(
            lambda: scripts.claim_attempt(
                self.client,
                self.generation_id,
                lease_ms=self.lease_ms,
                max_length=self.max_length,
                reason=reason,
                check_first=check_first,
                worker=self.worker,
            )
        )
        self.request = claimed.request
        if claimed.status is Status.CLAIMED:
            self.attempt = claimed.attempt
            self.batch = 0
            self._renewed_at = claimed_at
        return claimed.status

    def prepare(self, entries: list[tuple[str, dict[str, Any]]]) -> PendingWrite:
        """The next write: ``entries`` (none for a heartbeat), renewing the lease when due."""
        if entries:
            self.batch += 1
        return self._build(entries)

    def _build(self, entries: list[tuple[str, dict[str, Any]]]) -> PendingWrite:
        """A write of ``entries`` numbered ``batch`` (0: a heartbeat)."""
        now = time.monotonic()
        renew = now - self._renewed_at >= self.lease_ms / 3000
        args: list[Any] = [self.attempt, self.lease_ms, self.max_length, self.batch if entries else 0, int(renew)]
        for event_type, data in entries:
            args.append(event_type)
            args.append(orjson.dumps(data))
        return PendingWrite(scripts.write_call(self.generation_id, args), entries, now, renew)

    def settle(self, pending: PendingWrite, reply: Any) -> Outcome | PendingWrite | Retry:
        """What ``pending``'s reply means: a result, another write to send instead, or ``Retry`` (send it again).

        Raises what cannot be retried. After a write that failed, a hole of one batch is that write, not a lost one:
        the next write takes its number. A write refused at maxmemory is replaced by the generation's end
        (``redis_out_of_memory``), which Redis lets through (see ``scripts.WRITE``).
        """
        if isinstance(reply, BaseException):
            self._unsure = True
            if isinstance(reply, UNAVAILABLE):
                return Retry.UNAVAILABLE
            if isinstance(reply, redis.ResponseError) and is_out_of_memory(reply) and not pending.ends:
                return self._out_of_memory()
            raise reply
        result = scripts.decode_status(reply)
        if result is Status.GAP and self._unsure:
            # The write that failed before this one was never applied: this one takes its number.
            self._unsure = False
            self.batch -= 1
            again = self._build(pending.entries)
            again.out_of_memory = pending.out_of_memory
            return again
        self._unsure = False
        if result in (Status.WRITTEN, Status.REPEATED):
            # A repeat was written by the first try.
            if pending.renew:
                self._renewed_at = pending.at
            self._count(pending.entries)
            return Outcome.OUT_OF_MEMORY if pending.out_of_memory else Outcome.WRITTEN
        if result is Status.FENCED:
            return Outcome.FENCED
        if result is Status.CANCELLED:
            return Outcome.CANCELLED
        return Outcome.LOST

    def write(self, entries: list[tuple[str, dict[str, Any]]]) -> Outcome:
        """Append entries in one round trip of its own (renewing the lease when due), unless fenced or cancelled."""
        pending = self.prepare(entries)
        while True:
            try:
                call = pending.call
                reply = scripts.run(self.client, call.source, call.keys, call.args, call.hints)
            except Exception as exc:
                reply = exc
            settled = self.settle(pending, reply)
            if isinstance(settled, Outcome):
                self.outage.answered()
                return settled
            if isinstance(settled, PendingWrite):
                pending = settled
                continue
            if self.outage.gives_up(self.retry_s):
                raise reply
            time.sleep(self.outage.failed(reply))

    def heartbeat(self) -> Outcome:
        """Renew the lease and check for cancellation without writing a token."""
        return self.write([])

    def _count(self, entries: list[tuple[str, dict[str, Any]]]) -> None:
        """What a write that was applied wrote, for metrics: its tokens, and the code of an error."""
        for event_type, data in entries:
            if event_type == EventType.TOKEN.value:
                self.tokens += 1
            elif event_type == EventType.ERROR.value:
                self.error_code = str(data.get("code"))

    def _out_of_memory(self) -> PendingWrite:
        """The generation's end with ``redis_out_of_memory``: a refused write wrote nothing, and an end is let
        through at maxmemory (see ``scripts.WRITE``), so readers get every event before it, then the error."""
        logger.warning(
            "Generation %s: Redis refused a write at maxmemory; ending it.",
            self.generation_id,
            extra={"generation_id": self.generation_id},
        )
        message = "The stream store ran out of memory while this generation was running."
        pending = self.prepare([(EventType.ERROR.value, {"code": OUT_OF_MEMORY_CODE, "message": message})])
        pending.out_of_memory = True
        return pending

    def release(self) -> None:
        """Give the lease up at once (the worker is going away), so that a new attempt need not wait for it."""
        try:
            scripts.release_lease(self.client, self.generation_id, self.attempt)
        except redis.RedisError as exc:
            logger.warning("Generation %s could not release its lease: %s", self.generation_id, exc)

    def _retrying(self, call: Callable[[], Any]) -> Any:
        while True:
            try:
                result = call()
            except UNAVAILABLE as exc:
                if self.outage.gives_up(self.retry_s):
                    raise
                time.sleep(self.outage.failed(exc))
                continue
            self.outage.answered()
            return result


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

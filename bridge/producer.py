"""Writing a generation's tokens to its ``:raw`` stream: claimed, fenced by attempt, coalesced.

``GenerationWriter`` owns the Redis side (claim an attempt, write a batch, heartbeat). ``pump`` runs a
token source in a thread and feeds the writer: tokens that arrive within ``flush_window_s`` of the first
one in a batch are written in one round trip, and cancellation is noticed at each write or heartbeat.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import orjson
import redis

from bridge import keys, scripts
from bridge.errors import ProviderError
from bridge.events import TERMINAL_EVENTS, EventType

logger = logging.getLogger(__name__)


class Claim(int, Enum):
    UNKNOWN = -3
    FINISHED = -2
    HELD = -1


class WriteResult(Enum):
    WRITTEN = "written"
    FENCED = "fenced"
    CANCELLED = "cancelled"


@dataclass(slots=True)
class Finish:
    """The end of a token source: why it stopped and what it used."""

    finish_reason: str = "stop"
    usage: dict[str, int] = field(default_factory=dict)


Chunk = str | Finish
TokenSource = Callable[[threading.Event], Iterator[Chunk]]


class GenerationWriter:
    """The producer side of one generation: claims an attempt, then writes only while that attempt is current."""

    def __init__(self, client: redis.Redis, generation_id: str, *, lease_ms: int, max_length: int) -> None:
        self.client = client
        self.generation_id = generation_id
        self.lease_ms = lease_ms
        self.max_length = max_length
        self.attempt = 0
        self._keys = [
            keys.gen_meta(generation_id),
            keys.gen_lease(generation_id),
            keys.gen_raw(generation_id),
            keys.gen_cancel(generation_id),
        ]

    def claim(self, *, reason: str = "retry") -> int:
        """Start a new attempt. Returns its number (1, 2, …) or a negative ``Claim`` when refused."""
        args = [self.lease_ms, repr(time.time()), self.max_length, reason]
        result = int(scripts.run(self.client, scripts.CLAIM_ATTEMPT, self._keys[:3], args))
        if result > 0:
            self.attempt = result
        return result

    def write(self, entries: list[tuple[str, dict[str, Any]]]) -> WriteResult:
        """Append entries in one round trip (renewing the lease), unless fenced or cancelled."""
        args: list[Any] = [self.attempt, self.lease_ms, self.max_length]
        for event_type, data in entries:
            args.append(event_type)
            args.append(orjson.dumps(data))
        result = int(scripts.run(self.client, scripts.WRITE, self._keys, args))
        if result == -1:
            return WriteResult.FENCED
        if result == -2:
            return WriteResult.CANCELLED
        return WriteResult.WRITTEN

    def heartbeat(self) -> WriteResult:
        """Renew the lease and check for cancellation without writing a token."""
        return self.write([])


class Outcome(Enum):
    FINISHED = "finished"
    CANCELLED = "cancelled"
    FENCED = "fenced"


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
    return EventType.DONE.value, {"finish_reason": item.finish_reason, "usage": usage}


def pump(
    writer: GenerationWriter,
    source: TokenSource,
    *,
    flush_window_s: float = 0.002,
    poll_s: float = 0.2,
    join_timeout_s: float = 5.0,
) -> Outcome:
    """Run ``source`` and write what it yields until a terminal entry, cancellation or fencing."""
    inbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
    stop = threading.Event()

    def produce() -> None:
        try:
            for chunk in source(stop):
                if stop.is_set():
                    return
                if isinstance(chunk, Finish):
                    inbox.put(chunk)
                    return
                inbox.put((time.time(), chunk))
            inbox.put(Finish())
        except Exception as exc:
            inbox.put(_Failure(exc))
        finally:
            inbox.put(_END)

    thread = threading.Thread(target=produce, name=f"source-{writer.generation_id}", daemon=True)
    thread.start()
    completion_tokens = 0
    try:
        while True:
            try:
                item = inbox.get(timeout=poll_s)
            except queue.Empty:
                result = writer.heartbeat()
                if result is not WriteResult.WRITTEN:
                    return Outcome.CANCELLED if result is WriteResult.CANCELLED else Outcome.FENCED
                continue
            entries: list[tuple[str, dict[str, Any]]] = []
            deadline = time.monotonic() + flush_window_s
            while True:
                if item is _END:
                    # The source ended without a terminal chunk only after a Finish/_Failure was queued.
                    break
                if isinstance(item, Finish | _Failure):
                    entries.append(_terminal_entry(item, completion_tokens))
                    break
                ts, content = item
                completion_tokens += 1
                entries.append((EventType.TOKEN.value, {"content": content, "ts": ts}))
                remaining = deadline - time.monotonic()
                try:
                    item = inbox.get(timeout=remaining) if remaining > 0 else inbox.get_nowait()
                except queue.Empty:
                    break
            if entries:
                result = writer.write(entries)
                if result is WriteResult.CANCELLED:
                    return Outcome.CANCELLED
                if result is WriteResult.FENCED:
                    logger.warning("Generation %s attempt %s was fenced off.", writer.generation_id, writer.attempt)
                    return Outcome.FENCED
                if entries[-1][0] in TERMINAL_EVENTS:
                    return Outcome.FINISHED
    finally:
        stop.set()
        thread.join(join_timeout_s)

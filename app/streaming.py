"""Reading one client stream from a cursor: catch up from Redis, then follow live through the hub."""

from __future__ import annotations

import time
from collections.abc import Callable, Generator, Iterator
from contextlib import closing
from dataclasses import dataclass

import redis

from app import metrics
from app.hub import Hub
from bridge.events import ClientEvent
from bridge.streams import id_after, read_events
from bridge.ticker import Ticker

CATCH_UP_BATCH = 500

# Given the reader's cursor and the oldest entry still kept (None: none is), what replaces what is gone.
GapHandler = Callable[[str, ClientEvent | None], list[ClientEvent]]


def first_event(client: redis.Redis, key: str) -> ClientEvent | None:
    events = read_events(client, key, "0", 1)
    return events[0] if events else None


def _catch_up(
    hub: Hub, client: redis.Redis, key: str, after_id: str, until_id: str | None
) -> Iterator[list[ClientEvent]]:
    last = after_id
    while True:
        entries = read_events(client, key, last, CATCH_UP_BATCH, until_id=until_id)
        events = hub.resolve(key, entries)
        if events:
            yield events
        if len(entries) < CATCH_UP_BATCH:
            return
        last = entries[-1].id


def _until_terminal(events: list[ClientEvent]) -> tuple[list[ClientEvent], bool]:
    """``events`` up to and with the first terminal one, and whether there was one."""
    for index, event in enumerate(events):
        if event.terminal:
            return events[: index + 1], True
    return events, False


def follow(
    hub: Hub,
    client: redis.Redis,
    key: str,
    after_id: str,
    *,
    keepalive_s: float,
    max_duration_s: float,
    stop_at_terminal: bool = True,
    on_gap: GapHandler | None = None,
) -> Generator[list[ClientEvent] | None, None, None]:
    """Every event of ``key`` after ``after_id``, in order, without a gap or a duplicate, in batches.

    A batch is what one wake-up brought (a page of catch-up, or what the hub delivered since the last one),
    so that a client gets one socket write per batch. Yields None (a keep-alive) when between half of
    ``keepalive_s`` and ``keepalive_s`` passed without an event. Ends after a terminal event (when
    ``stop_at_terminal``) or once ``max_duration_s`` has passed (noticed within half of ``keepalive_s``), when
    the client is expected to resume. When the cursor is older than the oldest entry still kept, ``on_gap`` may
    answer with an event that replaces what was trimmed (a ``reset``); reading continues after that event's id.
    """
    position = _Position(after_id)
    deadline = time.monotonic() + max_duration_s
    # The one place a batch is cut at the terminal event and the position advanced, wherever the batch came from.
    with closing(
        _batches(hub, client, key, position, keepalive_s=keepalive_s, deadline=deadline, on_gap=on_gap)
    ) as batches:
        for batch in batches:
            if batch is None:
                yield None
                continue
            batch, ended = _until_terminal(batch) if stop_at_terminal else (batch, False)
            yield batch
            position.last = batch[-1].id
            if ended:
                return


@dataclass(slots=True)
class _Position:
    """The id of the last event a reader was given: ``follow`` advances it, the reads it drives start after it."""

    last: str


def _batches(
    hub: Hub,
    client: redis.Redis,
    key: str,
    position: _Position,
    *,
    keepalive_s: float,
    deadline: float,
    on_gap: GapHandler | None,
) -> Generator[list[ClientEvent] | None, None, None]:
    """The batches of ``follow``, uncut: a reset, catch-up from Redis, then live from the hub until it ends."""
    while True:
        if on_gap is not None and position.last != "0":
            yield from _reset(client, key, position.last, on_gap)
        caught_up = False
        for events in _catch_up(hub, client, key, position.last, None):
            caught_up = True
            yield events
        if not caught_up and on_gap is not None and position.last == "0":
            # Nothing kept to read from the start: nothing written yet, or the resume window has passed.
            gone = on_gap("0", None)
            if gone:
                yield gone
        fell_behind = yield from _live(hub, client, key, position, keepalive_s=keepalive_s, deadline=deadline)
        if not fell_behind:
            return
        # This client fell behind the hub; read what it missed from Redis and rejoin.
        hub.resyncs += 1
        metrics.HUB_RESYNCS.inc()


def _reset(client: redis.Redis, key: str, last: str, on_gap: GapHandler) -> Iterator[list[ClientEvent]]:
    """What ``on_gap`` answers for a cursor older than the oldest entry still kept, or for a stream that keeps no
    entry (nothing otherwise)."""
    oldest = first_event(client, key)
    if oldest is None or id_after(oldest.id, last):
        events = on_gap(last, oldest)
        if events:
            yield events


def _live(
    hub: Hub, client: redis.Redis, key: str, position: _Position, *, keepalive_s: float, deadline: float
) -> Generator[list[ClientEvent] | None, None, bool]:
    """What the hub delivers after ``position``, with keep-alives; returns True when the client fell behind it."""
    sub, joined_at = hub.subscribe(key, position.last)
    # Woken by the hub, or by the process's ticker for the keep-alive and the deadline: a client waiting
    # for its next token arms no timer of its own.
    ticker = Ticker.every(keepalive_s / 2)
    ticker.add(sub.wake)
    quiet_since = time.monotonic()
    try:
        if id_after(joined_at, position.last):
            # Written between the catch-up and the subscription: read from Redis up to where the hub starts.
            yield from _catch_up(hub, client, key, position.last, joined_at)
        while not sub.overflowed:
            if sub.closed or time.monotonic() >= deadline:
                return False
            fresh = [event for event in sub.drain() if id_after(event.id, position.last)]
            if fresh:
                yield fresh
                quiet_since = time.monotonic()
            elif time.monotonic() - quiet_since >= ticker.interval_s:
                quiet_since = time.monotonic()
                yield None
        return True
    finally:
        ticker.discard(sub.wake)
        hub.unsubscribe(sub)


def one_by_one(batches: Iterator[list[ClientEvent] | None]) -> Iterator[ClientEvent | None]:
    """The events of ``follow``'s batches one at a time (None for a keep-alive)."""
    for batch in batches:
        if batch is None:
            yield None
        else:
            yield from batch


def sse_frame(event: ClientEvent) -> str:
    """The event as an SSE frame, made once for all its readers."""
    if not event.sse:
        event.sse = f"id: {event.id}\nevent: {event.event}\ndata: {event.data}\n\n"
    return event.sse


KEEPALIVE_FRAME = ": keep-alive\n\n"


def ws_frame(event: ClientEvent) -> str:
    """The event as a WebSocket message, made once for all its readers."""
    if not event.ws:
        event.ws = f'{{"event":"{event.event}","id":"{event.id}","data":{event.data}}}'
    return event.ws

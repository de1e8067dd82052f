"""Reading one client stream from a cursor: catch up from Redis, then follow live through the hub."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import redis

from app import metrics
from app.hub import Hub, id_after
from bridge.events import ClientEvent
from bridge.streams import read_events

CATCH_UP_BATCH = 500

GapHandler = Callable[[str, ClientEvent], ClientEvent | None]


def first_event(client: redis.Redis, key: str) -> ClientEvent | None:
    events = read_events(client, key, "0", 1)
    return events[0] if events else None


def _catch_up(client: redis.Redis, key: str, after_id: str, until_id: str | None) -> Iterator[ClientEvent]:
    last = after_id
    while True:
        events = read_events(client, key, last, CATCH_UP_BATCH, until_id=until_id)
        yield from events
        if len(events) < CATCH_UP_BATCH:
            return
        last = events[-1].id


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
) -> Iterator[ClientEvent | None]:
    """Every event of ``key`` after ``after_id``, in order, without a gap or a duplicate.

    Yields None when ``keepalive_s`` passes without an event. Ends after a terminal event (when
    ``stop_at_terminal``) or after ``max_duration_s``, when the client is expected to resume. When the
    cursor is older than the oldest entry still kept, ``on_gap`` may answer with an event that replaces what
    was trimmed (a ``reset``); reading continues after that event's id.
    """
    deadline = time.monotonic() + max_duration_s
    last = after_id
    while True:
        if on_gap is not None and last != "0":
            oldest = first_event(client, key)
            if oldest is not None and id_after(oldest.id, last):
                reset = on_gap(last, oldest)
                if reset is not None:
                    yield reset
                    last = reset.id
        for event in _catch_up(client, key, last, None):
            yield event
            last = event.id
            if stop_at_terminal and event.terminal:
                return
        sub, position = hub.subscribe(key, last)
        try:
            if id_after(position, last):
                for event in _catch_up(client, key, last, position):
                    yield event
                    last = event.id
                    if stop_at_terminal and event.terminal:
                        return
            while not sub.overflowed:
                if sub.closed:
                    return
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return
                events = sub.drain(min(keepalive_s, remaining))
                if events is None:
                    yield None
                    continue
                for event in events:
                    if id_after(event.id, last):
                        yield event
                        last = event.id
                        if stop_at_terminal and event.terminal:
                            return
        finally:
            hub.unsubscribe(sub)
        # Overflowed: this client fell behind the hub; read what it missed from Redis and rejoin.
        hub.resyncs += 1
        metrics.HUB_RESYNCS.inc()


def sse_frame(event: ClientEvent) -> str:
    return f"id: {event.id}\nevent: {event.event}\ndata: {event.data}\n\n"


KEEPALIVE_FRAME = ": keep-alive\n\n"


def ws_frame(event: ClientEvent) -> str:
    return f'{{"event":"{event.event}","id":"{event.id}","data":{event.data}}}'

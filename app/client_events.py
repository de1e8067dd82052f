"""One client's read of a stream, whatever carries it: resuming from its cursor, following it live, and what
every reader counts in (the resume, the open stream, the events sent, its presence). SSE and WebSocket only
format what ``client_events`` yields.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Generator
from contextlib import closing
from dataclasses import dataclass
from typing import Any, Literal

import orjson
import redis

from app import metrics
from app.services import Services, services
from app.streaming import GapHandler, follow
from bridge import ends, keys, streams, tracing
from bridge.events import FINISHED_STATUSES, ClientEvent, EventType
from bridge.streams import id_after

logger = logging.getLogger(__name__)

Transport = Literal["sse", "ws", "durable"]

Batches = Generator[list[ClientEvent] | None, None, None]


def client_events(
    transport: Transport,
    key: str,
    cursor: str,
    *,
    stop_at_terminal: bool = True,
    on_gap: GapHandler | None = None,
    trace: str = "",
    max_duration_s: float | None = None,
    keepalive_s: float | None = None,
    **watched: str,
) -> Batches:
    """The batches of ``key`` after ``cursor`` for one client (None: time for a keep-alive), as ``follow`` reads them.

    Counts the resume at once (call it in the request); the open stream, its reader (``watched``: what it reads,
    for presence) and its events while it is iterated. A batch counts as sent once the next one is asked for:
    the transport has written it by then. ``trace``: the generation's trace context, for a span of its delivery
    to this reader (when tracing is on). ``max_duration_s`` and ``keepalive_s``: ``STREAM_MAX_DURATION_S`` and
    ``SSE_KEEPALIVE_S`` unless given.
    """
    s = services()
    if cursor != "0":
        metrics.RESUMES.labels(transport).inc()
    follow_for = _Follow(
        stop_at_terminal=stop_at_terminal,
        on_gap=on_gap,
        keepalive_s=keepalive_s or s.settings.sse_keepalive_s,
        max_duration_s=max_duration_s or s.settings.stream_max_duration_s,
    )
    batches = _counted(s, transport, key, cursor, follow_for, watched=watched)
    return _traced(batches, trace, transport, cursor) if trace and tracing.enabled() else batches


def _traced(batches: Batches, trace: str, transport: Transport, cursor: str) -> Batches:
    """``batches``, with a span of the generation's trace from the first event this reader is sent to its last."""
    span = None
    sent = 0
    try:
        with closing(batches):
            for batch in batches:
                if batch and span is None:
                    span = tracing.start_span("tokenbridge.deliver", trace, transport=transport, resumed=cursor != "0")
                yield batch
                if batch:
                    sent += len(batch)
                    if batch[-1].terminal:
                        tracing.end(span, events=sent, end=batch[-1].event)
                        span = None
    finally:
        tracing.end(span, events=sent, end="disconnected")


@dataclass(frozen=True, slots=True)
class _Follow:
    """How ``follow`` reads for one client."""

    stop_at_terminal: bool
    on_gap: GapHandler | None
    keepalive_s: float
    max_duration_s: float


def _counted(
    s: Services, transport: Transport, key: str, cursor: str, how: _Follow, *, watched: dict[str, str]
) -> Batches:
    sent = metrics.BufferedCount(metrics.EVENTS_SENT.labels(transport))
    open_streams = metrics.OPEN_STREAMS.labels(transport)
    open_streams.inc()
    batches = follow(
        s.hub,
        s.redis,
        key,
        cursor,
        keepalive_s=how.keepalive_s,
        max_duration_s=how.max_duration_s,
        stop_at_terminal=how.stop_at_terminal,
        on_gap=how.on_gap,
    )
    still_there = _existence_check(s, watched.get("generation_id"))
    try:
        with s.presence.watching(**watched), closing(batches):
            for batch in batches:
                if batch is None and not still_there():
                    return
                yield batch
                if batch is not None:
                    sent.add(len(batch))
    finally:
        sent.flush()
        open_streams.dec()


# A quiet stream checks that its generation still exists at its first keep-alive, then at every this many.
_EXISTENCE_CHECK_EVERY = 4


def _existence_check(s: Services, generation_id: str | None) -> Callable[[], bool]:
    """Whether a quiet generation stream should go on: False once its generation is gone from Redis (lost whole
    in a failover to a replica that never had it). The stream then ends without a terminal event: the client
    resumes and gets 404, instead of keep-alives until ``STREAM_MAX_DURATION_S``. One ``EXISTS`` per few
    keep-alives of a quiet stream, never per event."""
    if generation_id is None:
        return lambda: True
    keepalives = 0

    def still_there() -> bool:
        nonlocal keepalives
        keepalives += 1
        if keepalives % _EXISTENCE_CHECK_EVERY != 1:
            return True
        try:
            if s.redis.exists(keys.gen_meta(generation_id)):
                return True
        except redis.RedisError:
            return True  # an outage is not a loss: the hub and the client's resume deal with it
        logger.warning("Generation %s is gone from Redis; ending its stream (a resume gets 404).", generation_id)
        return False

    return still_there


def ended_before(key: str, cursor: str, meta: dict[str, str]) -> bool:
    """True when the generation is finished and the cursor is at or past its terminal event (the last kept entry,
    or, once the events are gone after the resume window, the last one committed)."""
    if meta.get("status") not in FINISHED_STATUSES or cursor == "0":
        return False
    last = streams.last_event(services().redis, key)
    last_id = last.id if last is not None else meta.get("last_id")
    return not last_id or not id_after(last_id, cursor)


def generation_reset(generation_id: str, meta: dict[str, str]) -> GapHandler:
    """A ``reset`` for a cursor older than what the generation's stream still keeps.

    The reset carries the text up to the oldest entry still kept and takes the id just before it, so the
    reader then gets every kept entry (the terminal one included) as usual. Once the resume window has passed and
    none is kept, any reader gets the reset with the whole text, then the terminal event (kept with the record).
    """
    client = services().redis  # bound now: the handler runs after the request context is gone
    key = keys.gen_out(generation_id)
    # Running when the request came: its events are kept (they go a resume window after its end).
    finished = meta.get("status") in FINISHED_STATUSES

    def reset(cursor: str, oldest: ClientEvent | None) -> list[ClientEvent]:
        if oldest is None:
            return _after_window(client, generation_id) if finished else []
        oldest_seq = int(orjson.loads(oldest.data).get("seq", 0))
        if oldest_seq == 0:
            return []  # nothing was trimmed: the cursor is just before the first event
        text = streams.load_text(client, generation_id)
        kept, restarted = _kept_text(client, key, generation_id)
        # :text holds the text since the last restart; with a restart among the kept entries the reader
        # discards what came before anyway.
        before = text[: len(text) - len(kept)] if not restarted and text.endswith(kept) else ""
        data = {"reason": "cursor_trimmed", "text": before, "next_seq": oldest_seq}
        logger.info("Generation %s: cursor %s was trimmed; sent a reset.", generation_id, cursor)
        return [ClientEvent(id=streams.previous_id(oldest.id), event="reset", data=orjson.dumps(data).decode())]

    return reset


def _after_window(client: redis.Redis, generation_id: str) -> list[ClientEvent]:
    """A finished generation whose events are no longer kept: a reset with its whole text, then its terminal event
    (nothing for a generation that has no event yet)."""
    pipe = client.pipeline(transaction=False)
    pipe.get(keys.gen_end(generation_id))
    pipe.hmget(keys.gen_meta(generation_id), ends.FIELDS)
    pipe.get(keys.gen_text(generation_id))
    kept, fields, text = pipe.execute()
    end = ends.read(kept, fields)
    if not end:
        return []
    name, last_id, data = str(end).split(" ", 2)
    next_seq = int(orjson.loads(data).get("seq", 0))
    body = {"reason": "cursor_trimmed", "text": text or "", "next_seq": next_seq}
    reset = ClientEvent(id=streams.previous_id(last_id), event="reset", data=orjson.dumps(body).decode())
    return [reset, ClientEvent(id=str(last_id), event=name, data=data)]


def _kept_text(client: redis.Redis, key: str, generation_id: str) -> tuple[str, bool]:
    """The text of the token entries the stream still keeps, and whether a restart is among them."""
    last_id: Any = client.hget(keys.gen_meta(generation_id), "last_id")
    kept = ""
    restarted = False
    after = "0"
    while last_id:
        events = streams.read_events(client, key, after, 500, until_id=last_id)
        for event in events:
            if event.event == EventType.TOKEN.value:
                kept += event.json().get("content", "")
            elif event.event == EventType.RESTART.value:
                restarted = True
        if len(events) < 500:
            break
        after = events[-1].id
    return kept, restarted

"""The read path of the Durable Streams protocol: every generation and session, readable by its clients.

``GET``/``HEAD /v1/stream/generations/{id}`` and ``/v1/stream/sessions/{id}`` serve an ``application/json``
stream whose messages are tokenbridge's events in the WebSocket frame's shape, ``{"event", "id", "data"}``:
a catch-up read (``offset``: ``-1``, ``now`` or an offset this server gave), ``live=long-poll`` (waits up to
``DURABLE_STREAMS_LONG_POLL_S`` for something new) and ``live=sse`` (``data`` and ``control`` events, for at most
a minute per connection, as the protocol asks). Authenticated and owned exactly like the event routes.

An offset is the id of the last event a reader has, written so that offsets sort as the stream does
(``ms_seq``, zero-padded): the same in every web process, and good for a resume through SSE or WebSocket too.
A generation's stream is closed (``Stream-Closed``) once its terminal event has been read; a session's never
is. An offset older than what a generation still keeps answers ``410``; ``-1`` after its resume window gets the
``reset`` event (the whole text) and the terminal event, as every reader does. Live reads go through the hub:
one Redis reader per process, whatever the number of readers.
"""

from __future__ import annotations

import random
import re
import time
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass

import orjson
from flask import Blueprint, Response, request

from app.client_events import Batches, client_events, ended_before, generation_reset
from app.errors import ApiError
from app.inputs import authenticate, check_session, load_meta
from app.services import services
from app.sse import bound_writes
from app.streaming import CATCH_UP_BATCH, KEEPALIVE_FRAME, GapHandler, first_event, ws_frame
from bridge import keys, streams
from bridge.durable_store import Producer
from bridge.events import FINISHED_STATUSES, ClientEvent
from bridge.streams import id_after, parse_stream_id, read_events

bp = Blueprint("durable_streams", __name__, url_prefix="/v1/stream")
bp.before_request(authenticate)

CONTENT_TYPE = "application/json"
# The protocol asks that an SSE connection be closed about every minute (the client resumes from its offset).
SSE_MAX_S = 60.0
# How often a live read looks at its deadline (and an SSE one sends a keep-alive, at most every other time).
LIVE_TICK_S = 2.0
# Cursors: 20 s intervals counted from 2024-10-09T00:00:00Z, the protocol's defaults.
CURSOR_EPOCH_S = 1728432000
CURSOR_INTERVAL_S = 20
# Partial chunks and closed streams never change: a private cache may keep them (protocol section 10.1).
IMMUTABLE = "private, max-age=60, stale-while-revalidate=300"

# The response headers a client of the protocol reads (a browser page of another origin needs them exposed).
HEADERS = ("Stream-Next-Offset", "Stream-Cursor", "Stream-Up-To-Date", "Stream-Closed", "ETag")

_OFFSET = re.compile(r"(\d{1,20})_(\d{1,20})")
_START = "0-0"


def offset_of(entry_id: str) -> str:
    """The protocol offset of a stream id: sortable as the ids are, with no character the protocol forbids."""
    parsed = parse_stream_id(entry_id)
    assert parsed is not None
    ms, seq = parsed
    return f"{ms:016d}_{seq:020d}"


def id_of(offset: str) -> str | None:
    """The stream id an offset of ``offset_of`` stands for; None when it is not one."""
    match = _OFFSET.fullmatch(offset)
    return f"{int(match[1])}-{int(match[2])}" if match else None


def next_cursor(client_cursor: str | None, now: float | None = None) -> str:
    """The protocol's ``Stream-Cursor``: the current interval, or past the client's when it is not behind it."""
    current = int(((time.time() if now is None else now) - CURSOR_EPOCH_S) // CURSOR_INTERVAL_S)
    try:
        theirs = int(client_cursor or "")
    except ValueError:
        return str(current)
    if theirs < current:
        return str(current)
    # Jitter of 1 s to an hour, in intervals: a cached empty answer cannot come back for ever.
    return str(theirs + max(1, -(-random.randint(1, 3600) // CURSOR_INTERVAL_S)))


# The protocol's integers (Producer-Epoch, Producer-Seq, Stream-TTL) are at most 2^53 - 1 (JavaScript's safe ones).
MAX_SAFE_INTEGER = 2**53 - 1


def closed_header() -> bool:
    """Whether the request says ``Stream-Closed: true`` (any other value is no header at all, as the protocol asks)."""
    return request.headers.get("Stream-Closed", "").strip().lower() == "true"


def producer_headers() -> Producer | None:
    """The idempotent producer's headers: all three or none (400)."""
    given = [request.headers.get(h) for h in ("Producer-Id", "Producer-Epoch", "Producer-Seq")]
    if all(value is None for value in given):
        return None
    producer_id, epoch, seq = given
    if producer_id is None or epoch is None or seq is None:
        raise ApiError(400, "invalid_producer", "Producer-Id, Producer-Epoch and Producer-Seq go together.")
    if not producer_id:
        raise ApiError(400, "invalid_producer", "Producer-Id must not be empty.")
    for header, value in (("Producer-Epoch", epoch), ("Producer-Seq", seq)):
        if not re.fullmatch(r"[0-9]+", value) or int(value) > MAX_SAFE_INTEGER:
            raise ApiError(400, "invalid_producer", f"{header} must be a whole number from 0 to 2^53 - 1.")
    return Producer(producer_id, int(epoch), int(seq))


@dataclass(slots=True)
class _Stream:
    """What is read: a generation's ``:out`` (with its record) or a session's stream."""

    key: str
    name: str
    meta: dict[str, str] | None = None
    on_gap: GapHandler | None = None
    # The generation's or the session's id (for presence).
    ident: str = ""

    @property
    def finished(self) -> bool:
        return self.meta is not None and self.meta.get("status") in FINISHED_STATUSES


@dataclass(slots=True)
class _Page:
    events: list[ClientEvent]
    next_id: str
    up_to_date: bool
    closed: bool


@bp.route("/generations/<generation_id>", methods=["GET"])
def generation_stream(generation_id: str) -> Response:
    meta = load_meta(generation_id)
    stream = _Stream(
        keys.gen_out(generation_id),
        f"generations/{generation_id}",
        meta=meta,
        on_gap=generation_reset(generation_id, meta),
        ident=generation_id,
    )
    return _answer(stream)


@bp.route("/sessions/<session_id>", methods=["GET"])
def session_stream(session_id: str) -> Response:
    check_session(session_id)
    return _answer(_Stream(keys.session_out(session_id), f"sessions/{session_id}", ident=session_id))


def security_headers(response: Response) -> Response:
    """The protocol's browser headers (section 10.7), on every answer, errors included; an answer without a body
    (204, 304) has no Content-Type (Flask's default would say text/html)."""
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Cross-Origin-Resource-Policy"] = "cross-origin"
    if response.status_code in (204, 304):
        response.headers.pop("Content-Type", None)
    return response


bp.after_request(security_headers)


def _answer(stream: _Stream) -> Response:
    offset, live = read_params()
    if request.method == "HEAD":
        return _head(stream)
    if offset == "now":
        tail_id = _tail(stream)
        if live is None:
            return _now(stream, tail_id)
        after_id = tail_id
    else:
        after_id = _START if offset == "-1" else offset
    if live == "sse":
        return _sse(stream, after_id, initial=_empty_page(stream, after_id) if offset == "now" else None)
    if live == "long-poll":
        page = _empty_page(stream, after_id) if offset == "now" else _page(stream, after_id)
        return _long_poll(stream, after_id, page)
    return _catch_up(stream, offset, _page(stream, after_id))


def read_params() -> tuple[str, str | None]:
    """``offset`` (``-1``, ``now`` or a stream id) and ``live`` (None, ``long-poll`` or ``sse``); unknown parameters
    are ignored, as the protocol asks."""
    offsets = request.args.getlist("offset")
    live = request.args.get("live") or None
    if len(offsets) > 1:
        raise ApiError(400, "invalid_offset", "Give one offset parameter.")
    if live not in (None, "long-poll", "sse"):
        raise ApiError(400, "invalid_live", "live must be long-poll or sse.")
    if not offsets:
        if live is not None:
            raise ApiError(400, "invalid_offset", f"live={live} needs an offset (-1 for the start, now for the tail).")
        return "-1", None
    offset = offsets[0]
    if offset in ("-1", "now"):
        return offset, live
    entry_id = id_of(offset)
    if entry_id is None:
        raise ApiError(400, "invalid_offset", "offset must be -1, now, or a Stream-Next-Offset this stream gave.")
    return entry_id, live


def _tail(stream: _Stream) -> str:
    """The id of the stream's last event (after the resume window, the generation's last one), or the start."""
    last = streams.last_event(services().redis, stream.key)
    if last is not None:
        return last.id
    return (stream.meta or {}).get("last_id") or _START


def _page(stream: _Stream, after_id: str) -> _Page:
    """What a catch-up read from ``after_id`` returns: at most ``CATCH_UP_BATCH`` events, ending at a terminal one."""
    client = services().redis
    if stream.meta is not None and after_id != _START:
        if ended_before(stream.key, after_id, stream.meta):
            return _Page([], after_id, up_to_date=True, closed=True)
        _refuse_trimmed(stream, after_id)
    entries = read_events(client, stream.key, after_id, CATCH_UP_BATCH)
    events = services().hub.resolve(stream.key, entries)
    if not events and after_id == _START and stream.finished and stream.on_gap is not None:
        # Past the resume window: the whole text in a reset, then the terminal event.
        events = stream.on_gap("0", None)
    ended = False
    if stream.meta is not None:
        for index, event in enumerate(events):
            if event.terminal:
                events, ended = events[: index + 1], True
                break
    up_to_date = ended or len(entries) < CATCH_UP_BATCH
    return _Page(events, events[-1].id if events else after_id, up_to_date=up_to_date, closed=ended)


def _empty_page(stream: _Stream, tail_id: str) -> _Page:
    return _Page([], tail_id, up_to_date=True, closed=stream.finished)


def _refuse_trimmed(stream: _Stream, after_id: str) -> None:
    """410 for an offset older than the oldest event the generation still keeps (trimmed, or past the window)."""
    oldest = first_event(services().redis, stream.key)
    # Nothing kept of a finished generation: its window has passed. A first kept event of seq 0: nothing trimmed.
    trimmed = oldest is not None and id_after(oldest.id, after_id) and int(oldest.json().get("seq", 0)) > 0
    if trimmed or (oldest is None and stream.finished):
        raise ApiError(
            410,
            "offset_gone",
            "Events from this offset are no longer kept; read from offset -1 for the text so far (a reset event).",
        )


def _body(events: list[ClientEvent]) -> str:
    return "[" + ",".join(map(ws_frame, events)) + "]"


def _headers(page: _Page) -> dict[str, str]:
    return read_headers(page.next_id, up_to_date=page.up_to_date, closed=page.closed)


def read_headers(next_id: str, *, up_to_date: bool, closed: bool) -> dict[str, str]:
    """The protocol's headers of a read that ends at ``next_id``."""
    headers = {"Stream-Next-Offset": offset_of(next_id)}
    if up_to_date:
        headers["Stream-Up-To-Date"] = "true"
    if closed:
        headers["Stream-Closed"] = "true"
    return headers


def _head(stream: _Stream) -> Response:
    tail_id = _tail(stream)
    headers = {"Stream-Next-Offset": offset_of(tail_id), "Cache-Control": "no-store"}
    if stream.finished:
        headers["Stream-Closed"] = "true"
    headers["ETag"] = _etag(stream, "-1", tail_id, stream.finished)
    return Response(status=200, content_type=CONTENT_TYPE, headers=headers)


def _now(stream: _Stream, tail_id: str) -> Response:
    headers = {**_headers(_empty_page(stream, tail_id)), "Cache-Control": "no-store"}
    return Response("[]", status=200, content_type=CONTENT_TYPE, headers=headers)


def _etag(stream: _Stream, start: str, end_id: str, closed: bool) -> str:
    return f'"{stream.name}:{start if start == "-1" else offset_of(start)}:{offset_of(end_id)}{":c" if closed else ""}"'


def _catch_up(stream: _Stream, offset: str, page: _Page) -> Response:
    etag = _etag(stream, offset, page.next_id, page.closed)
    return catch_up_response(
        etag,
        page.next_id,
        up_to_date=page.up_to_date,
        closed=page.closed,
        body=_body(page.events),
        content_type=CONTENT_TYPE,
    )


def catch_up_response(
    etag: str, next_id: str, *, up_to_date: bool, closed: bool, body: str | bytes, content_type: str
) -> Response:
    """A catch-up read's answer, of a generation's stream or a written one: 304 when the client has this page
    (``If-None-Match``), else ``body``; a page that will not change (the stream closed, or more after it) may be
    cached."""
    headers = {**read_headers(next_id, up_to_date=up_to_date, closed=closed), "ETag": etag}
    headers["Cache-Control"] = IMMUTABLE if closed or not up_to_date else "no-cache"
    if request.headers.get("If-None-Match") == etag:
        return Response(status=304, headers={"ETag": etag, "Cache-Control": headers["Cache-Control"]})
    return Response(body, status=200, content_type=content_type, headers=headers)


def _long_poll(stream: _Stream, after_id: str, page: _Page) -> Response:
    """What is there after ``after_id`` at once; else the first events the hub brings within the timeout (204
    after it). A closed stream read to its end answers 204 at once."""
    cursor = next_cursor(request.args.get("cursor"))
    if not page.events and not page.closed:
        page = _wait(stream, after_id)
    headers = {**_headers(page), "Stream-Cursor": cursor, "Cache-Control": "no-cache"}
    if not page.events:
        headers["Stream-Up-To-Date"] = "true"
        return Response(status=204, headers=headers)
    headers["ETag"] = _etag(stream, after_id, page.next_id, page.closed)
    return Response(_body(page.events), status=200, content_type=CONTENT_TYPE, headers=headers)


def _wait(stream: _Stream, after_id: str) -> _Page:
    batches = _follow(stream, after_id, max_duration_s=services().settings.durable_streams_long_poll_s)
    with closing(batches):
        for batch in batches:
            if batch:
                closed = stream.meta is not None and batch[-1].terminal
                return _Page(batch, batch[-1].id, up_to_date=len(batch) < CATCH_UP_BATCH, closed=closed)
    return _Page([], after_id, up_to_date=True, closed=False)


def _follow(stream: _Stream, after_id: str, *, max_duration_s: float) -> Batches:
    """The live read of ``client_events`` (presence, metrics), ended after ``max_duration_s``; its deadline is
    looked at, and a keep-alive sent when quiet, every ``LIVE_TICK_S`` or two."""
    watched = {"generation_id" if stream.meta is not None else "session_id": stream.ident}
    return client_events(
        "durable",
        stream.key,
        after_id,
        stop_at_terminal=stream.meta is not None,
        on_gap=None,
        trace="",
        max_duration_s=max_duration_s,
        keepalive_s=LIVE_TICK_S * 2,
        **watched,
    )


def _sse(stream: _Stream, after_id: str, *, initial: _Page | None) -> Response:
    """``data`` and ``control`` events: the catch-up first (checked before the answer starts), then what the hub
    brings, until the stream closes or a minute has passed."""
    first = initial or _page(stream, after_id)
    bound_writes(request.environ.get("gunicorn.socket"), services().settings.sse_send_timeout_s)
    client_cursor = request.args.get("cursor")

    # Made in the request (it needs the app); read in the body.
    batches = None if first.closed else _follow(stream, first.next_id, max_duration_s=SSE_MAX_S)

    def body() -> Iterator[str]:
        yield _sse_events(first, next_cursor(client_cursor))
        if batches is None:
            return
        with closing(batches):
            for batch in batches:
                if batch is None:
                    yield KEEPALIVE_FRAME
                    continue
                closed = stream.meta is not None and batch[-1].terminal
                page = _Page(batch, batch[-1].id, up_to_date=closed or len(batch) < CATCH_UP_BATCH, closed=closed)
                yield _sse_events(page, next_cursor(client_cursor))

    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return Response(body(), status=200, content_type="text/event-stream", headers=headers)


def _sse_events(page: _Page, cursor: str) -> str:
    """A ``data`` event with the page's events (when it has any) and its ``control`` event."""
    control: dict[str, object] = {"streamNextOffset": offset_of(page.next_id)}
    if page.closed:
        control["streamClosed"] = True
    else:
        control["streamCursor"] = cursor
    if page.up_to_date:
        control["upToDate"] = True
    text = f"event: data\ndata: {_body(page.events)}\n\n" if page.events else ""
    return f"{text}event: control\ndata: {orjson.dumps(control).decode()}\n\n"

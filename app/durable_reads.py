"""Reads of the streams clients write over the Durable Streams protocol (``app.durable_store`` routes them): catch-up
pages with ETags, long-poll, and SSE with ``data`` and ``control`` events. Live reads go through the hub, as every
other reader's: one Redis reader per process.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Generator, Iterator
from contextlib import closing
from dataclasses import dataclass

import orjson
from flask import Response, request

from app.durable_streams import (
    LIVE_TICK_S,
    SSE_MAX_S,
    catch_up_response,
    next_cursor,
    offset_of,
    read_headers,
)
from app.services import services
from app.sse import bound_writes
from app.streaming import CATCH_UP_BATCH, KEEPALIVE_FRAME, follow
from bridge import durable_store as store
from bridge import keys
from bridge.durable_store import Info
from bridge.events import ClientEvent

# How many messages one catch-up read returns at most (the rest on the next read, from its offset).
PAGE = CATCH_UP_BATCH
_START = store.START_ID
_LINE_BREAK = re.compile(r"\r\n|\r|\n")


def read(info: Info, offset: str, live: str | None) -> Response:
    """A ``GET`` of a visible stream from ``offset`` (``-1``, ``now`` or a Stream-Next-Offset): catch-up, or ``live``
    by long-poll or SSE."""
    if offset == "now":
        if live is None or info.closed:
            return _now(info, live)
        after_id = info.tail
    else:
        after_id = _START if offset == "-1" else offset
    if live == "sse":
        return _sse(info, after_id)
    page = _page(info, after_id)
    if live == "long-poll":
        return _long_poll(info, after_id, page)
    return _catch_up(info, offset, page)


@dataclass(slots=True)
class _Page:
    entries: list[tuple[str, str]]  # (event, data) of each message
    next_id: str
    up_to_date: bool
    closed: bool


def _page(info: Info, after_id: str, batch: list[tuple[str, str, str]] | None = None) -> _Page:
    """The messages after ``after_id`` (read now, or ``batch`` as the hub brought them), up to a page of them."""
    entries = batch if batch is not None else store.read(services().redis, info.name, after_id, PAGE + 1)
    closed = any(event == store.CLOSED_MARKER for _, event, _ in entries)
    messages = [(entry_id, event, data) for entry_id, event, data in entries if event != store.CLOSED_MARKER]
    full = batch is None and len(messages) > PAGE
    messages = messages[:PAGE]
    next_id = messages[-1][0] if messages else after_id
    at_end = not full
    return _Page([(e, d) for _, e, d in messages], next_id, up_to_date=at_end, closed=closed and at_end)


def _body(info: Info, page: _Page) -> bytes:
    if info.json:
        return b"[" + b",".join(data.encode() for _, data in page.entries) + b"]"
    return b"".join(store.payload(event, data) for event, data in page.entries)


def _headers(page: _Page) -> dict[str, str]:
    return read_headers(page.next_id, up_to_date=page.up_to_date, closed=page.closed)


def _etag(info: Info, start: str, end_id: str, closed: bool) -> str:
    first = start if start == "-1" else offset_of(start)
    stream = hashlib.sha256(info.name.encode()).hexdigest()[:16]
    return f'"{stream}:{first}:{offset_of(end_id)}{":c" if closed else ""}"'


def head(info: Info) -> Response:
    """``HEAD``: the stream's headers, no body."""
    headers = {
        "Content-Type": info.content_type,
        "Stream-Next-Offset": offset_of(info.tail),
        "Cache-Control": "no-store",
    }
    if info.closed:
        headers["Stream-Closed"] = "true"
    if info.ttl:
        headers["Stream-TTL"] = info.ttl
    if info.expires_at:
        headers["Stream-Expires-At"] = info.expires_at
    return Response(status=200, headers=headers)


def _now(info: Info, live: str | None) -> Response:
    page = _Page([], info.tail, up_to_date=True, closed=info.closed)
    headers = {**_headers(page), "Cache-Control": "no-store"}
    if live == "long-poll":
        return Response(status=204, headers=headers)
    if live == "sse":
        return Response(_sse_events(info, page, ""), status=200, content_type="text/event-stream", headers=headers)
    return Response(b"[]" if info.json else b"", status=200, content_type=info.content_type, headers=headers)


def _catch_up(info: Info, offset: str, page: _Page) -> Response:
    etag = _etag(info, offset, page.next_id, page.closed)
    return catch_up_response(
        etag,
        page.next_id,
        up_to_date=page.up_to_date,
        closed=page.closed,
        body=_body(info, page),
        content_type=info.content_type,
    )


def _long_poll(info: Info, after_id: str, page: _Page) -> Response:
    cursor = next_cursor(request.args.get("cursor"))
    if not page.entries and not page.closed:
        page = _wait(info, after_id)
    headers = {**_headers(page), "Cache-Control": "no-cache"}
    if not page.closed:
        headers["Stream-Cursor"] = cursor
    if not page.entries:
        headers["Stream-Up-To-Date"] = "true"
        return Response(status=204, headers=headers)
    headers["ETag"] = _etag(info, after_id, page.next_id, page.closed)
    return Response(_body(info, page), status=200, content_type=info.content_type, headers=headers)


def _live(info: Info, after_id: str, max_duration_s: float) -> Generator[list[tuple[str, str, str]] | None]:
    """What the hub brings after ``after_id`` (None: quiet for a while), until ``max_duration_s`` has passed. Made
    in the request (it needs the app), read in the body."""
    s = services()
    key = keys.durable_stream(info.name, "out")
    keepalive_s = LIVE_TICK_S * 2
    batches = follow(
        s.hub, s.redis, key, after_id, keepalive_s=keepalive_s, max_duration_s=max_duration_s, stop_at_terminal=False
    )
    return _entries(batches)


def _entries(batches: Generator[list[ClientEvent] | None]) -> Generator[list[tuple[str, str, str]] | None]:
    with closing(batches):
        for batch in batches:
            yield None if batch is None else [(event.id, event.event, event.data) for event in batch]


def _wait(info: Info, after_id: str) -> _Page:
    with closing(_live(info, after_id, services().settings.durable_streams_long_poll_s)) as batches:
        for batch in batches:
            if batch:
                return _page(info, after_id, batch)
    return _Page([], after_id, up_to_date=True, closed=False)


def _sse(info: Info, after_id: str) -> Response:
    """``data`` and ``control`` events: the catch-up first, then what the hub brings, until the stream closes or a
    minute has passed."""
    first = _page(info, after_id)
    bound_writes(request.environ.get("gunicorn.socket"), services().settings.sse_send_timeout_s)
    client_cursor = request.args.get("cursor")
    live = None if first.closed else _live(info, first.next_id, SSE_MAX_S)

    def body() -> Iterator[str]:
        yield _sse_events(info, first, next_cursor(client_cursor))
        if live is None:
            return
        position = first.next_id
        with closing(live):
            for batch in live:
                if batch is None:
                    yield KEEPALIVE_FRAME
                    continue
                page = _page(info, position, batch)
                position = page.next_id
                if not page.entries and not page.closed:
                    continue
                yield _sse_events(info, page, next_cursor(client_cursor))
                if page.closed:
                    return

    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    if not store.is_text(info.content_type):
        headers["Stream-SSE-Data-Encoding"] = "base64"
    return Response(body(), status=200, content_type="text/event-stream", headers=headers)


def _sse_events(info: Info, page: _Page, cursor: str) -> str:
    """A ``data`` event with the page's messages (when it has any), then its ``control`` event. Each line of the data
    is a ``data:`` line of its own, whatever ends it (``\\r\\n``, ``\\r`` or ``\\n``): no payload can start an event."""
    control: dict[str, object] = {"streamNextOffset": offset_of(page.next_id)}
    if page.closed:
        control["streamClosed"] = True
    elif cursor:
        control["streamCursor"] = cursor
    if page.up_to_date or page.closed:
        control["upToDate"] = True
    text = ""
    if page.entries:
        if info.json:
            data = "[" + ",".join(d for _, d in page.entries) + "]"
        elif store.is_text(info.content_type):
            data = _body(info, page).decode()
        else:
            data = base64.b64encode(_body(info, page)).decode()
        lines = "".join(f"data:{line}\n" for line in _LINE_BREAK.split(data))
        text = f"event: data\n{lines}\n"
    return f"{text}event: control\ndata:{_json(control)}\n\n"


def _json(value: object) -> str:
    return orjson.dumps(value).decode()

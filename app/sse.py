"""Server-Sent Events of a generation and of a session: ``client_events`` written as SSE frames."""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterator
from typing import Any

import redis
from flask import Blueprint, Response, request

from app.client_events import Batches, client_events, ended_before, generation_reset
from app.inputs import authenticate, check_session, load_meta, read_cursor
from app.services import services
from app.streaming import KEEPALIVE_FRAME, sse_frame
from bridge import keys, tracing

logger = logging.getLogger(__name__)

bp = Blueprint("sse", __name__, url_prefix="/v1")
bp.before_request(authenticate)

STREAM_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


@bp.get("/generations/<generation_id>/events")
def generation_events(generation_id: str) -> Response:
    meta = load_meta(generation_id)
    cursor = read_cursor()
    key = keys.gen_out(generation_id)
    if ended_before(key, cursor, meta):
        # The client already has the terminal event: 204 tells EventSource to stop reconnecting.
        return Response(status=204, headers=STREAM_HEADERS)
    on_gap = generation_reset(generation_id, meta)
    trace = meta.get(tracing.META_FIELD, "")
    return _event_stream(
        key, client_events("sse", key, cursor, on_gap=on_gap, trace=trace, generation_id=generation_id)
    )


@bp.get("/sessions/<session_id>/events")
def session_events(session_id: str) -> Response:
    check_session(session_id)
    key = keys.session_out(session_id)
    return _event_stream(key, client_events("sse", key, read_cursor(), stop_at_terminal=False, session_id=session_id))


def _event_stream(key: str, events: Batches) -> Response:
    """The SSE response of ``events``: a ``retry`` hint, then one write per batch, and a comment to keep alive."""
    bound_writes(request.environ.get("gunicorn.socket"), services().settings.sse_send_timeout_s)

    def body() -> Iterator[str]:
        yield "retry: 1000\n\n"
        try:
            for batch in events:
                # One socket write for everything this wake-up brought.
                yield KEEPALIVE_FRAME if batch is None else "".join(map(sse_frame, batch))
        except redis.RedisError as exc:
            # End the response; the client resumes from its Last-Event-ID once Redis is back.
            logger.warning("Stream %s ended early: %s", key, exc)

    return Response(body(), mimetype="text/event-stream", headers=STREAM_HEADERS)


def bound_writes(sock: Any, timeout_s: float) -> None:
    """Make a write to a client that stopped reading, or vanished without a FIN, fail within ``timeout_s``.

    The socket timeout bounds a write blocked on a full buffer; TCP_USER_TIMEOUT bounds data left
    unacknowledged (the keep-alive comments make sure there is some). Either frees the greenlet.
    """
    if not isinstance(sock, socket.socket):
        return
    try:
        sock.settimeout(timeout_s)
        if hasattr(socket, "TCP_USER_TIMEOUT"):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, int(timeout_s * 1000))
    except OSError as exc:
        logger.debug("Could not bound writes on the client socket: %s", exc)

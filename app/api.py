"""The ``/v1`` HTTP API: create, get and cancel generations; read them over SSE and WebSocket."""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import orjson
import redis
from flask import Blueprint, Response, g, jsonify, request
from simple_websocket import ConnectionClosed
from wsproto.events import TextMessage

from app import metrics
from app.auth import Action
from app.errors import ApiError
from app.extensions import sock
from app.hub import id_after
from app.inputs import authenticate, check_session, json_body, limit_arg, load_meta, read_cursor
from app.services import Services, services
from app.streaming import KEEPALIVE_FRAME, GapHandler, follow, sse_frame, ws_frame
from app.submit import submit_generation
from bridge import keys, streams
from bridge.events import ClientEvent, EventType
from bridge.generation import GenerationRecord
from bridge.streams import AbortResult

logger = logging.getLogger(__name__)

bp = Blueprint("api", __name__, url_prefix="/v1")

_STREAM_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


@bp.before_request
def _authenticate() -> None:
    authenticate()
    if request.endpoint == "api.generation_ws" and request.view_args:
        # Refuse with an HTTP error before the upgrade: a browser cannot read a WebSocket close reason.
        _check_origin()
        load_meta(request.view_args["generation_id"])
        read_cursor()


def _check_origin() -> None:
    """A browser's WebSocket may come from this site or an allowed origin; others are refused (403)."""
    origin = request.headers.get("Origin")
    if origin is None:
        return  # not a browser
    # Same site: compare hosts only, since behind a TLS proxy the scheme seen here may be http.
    same_site = urlsplit(origin).netloc == request.host
    if not same_site and origin.rstrip("/") not in services().settings.cors_origin_list:
        raise ApiError(403, "origin_not_allowed", f"WebSocket connections from {origin} are not allowed.")


# -- helpers ---------------------------------------------------------------------------------------


def _ended_before(key: str, cursor: str, meta: dict[str, str]) -> bool:
    """True when the generation is finished and the cursor is at or past its terminal event."""
    if meta.get("status") not in ("completed", "failed", "cancelled") or cursor == "0":
        return False
    last = streams.last_event(services().redis, key)
    return last is None or not id_after(last.id, cursor)


def _generation_reset(generation_id: str) -> GapHandler:
    """A ``reset`` for a cursor older than what the generation's stream still keeps.

    The reset carries the text up to the oldest entry still kept and takes the id just before it, so the
    reader then gets every kept entry (the terminal one included) as usual.
    """
    client = services().redis  # bound now: the handler runs after the request context is gone
    key = keys.gen_out(generation_id)

    def reset(cursor: str, oldest: ClientEvent) -> ClientEvent | None:
        oldest_seq = int(orjson.loads(oldest.data).get("seq", 0))
        if oldest_seq == 0:
            return None  # nothing was trimmed: the cursor is just before the first event
        text = streams.load_text(client, generation_id)
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
        # :text holds the text since the last restart; with a restart among the kept entries the reader
        # discards what came before anyway.
        before = text[: len(text) - len(kept)] if not restarted and text.endswith(kept) else ""
        data = {"reason": "cursor_trimmed", "text": before, "next_seq": oldest_seq}
        logger.info("Generation %s: cursor %s was trimmed; sent a reset.", generation_id, cursor)
        return ClientEvent(id=streams.previous_id(oldest.id), event="reset", data=orjson.dumps(data).decode())

    return reset


def _event_stream(
    key: str, cursor: str, *, stop_at_terminal: bool, on_gap: GapHandler | None = None, **watched: str
) -> Response:
    """SSE of ``key`` from ``cursor``; ``watched`` names what the reader counts as a reader of (presence)."""
    s = services()
    if cursor != "0":
        metrics.RESUMES.labels("sse").inc()
    sent = metrics.BufferedCount(metrics.EVENTS_SENT.labels("sse"))
    open_streams = metrics.OPEN_STREAMS.labels("sse")
    _bound_writes(request.environ.get("gunicorn.socket"), s.settings.sse_send_timeout_s)

    def body() -> Iterator[str]:
        open_streams.inc()
        try:
            with s.presence.watching(**watched):
                yield "retry: 1000\n\n"
                for batch in follow(
                    s.hub,
                    s.redis,
                    key,
                    cursor,
                    keepalive_s=s.settings.sse_keepalive_s,
                    max_duration_s=s.settings.stream_max_duration_s,
                    stop_at_terminal=stop_at_terminal,
                    on_gap=on_gap,
                ):
                    if batch is None:
                        yield KEEPALIVE_FRAME
                    else:
                        # One socket write for everything this wake-up brought.
                        yield "".join(map(sse_frame, batch))
                        sent.add(len(batch))
        except redis.RedisError as exc:
            # End the response; the client resumes from its Last-Event-ID once Redis is back.
            logger.warning("Stream %s ended early: %s", key, exc)
        finally:
            sent.flush()
            open_streams.dec()

    return Response(body(), mimetype="text/event-stream", headers=_STREAM_HEADERS)


def _bound_writes(sock: Any, timeout_s: float) -> None:
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


def _send_frames(ws: Any, texts: tuple[str, ...]) -> None:
    """Several text messages in one socket write (``ws.send`` writes each message on its own)."""
    if len(texts) == 1:
        ws.send(texts[0])
        return
    data = b"".join(ws.ws.send(TextMessage(data=text)) for text in texts)
    ws.sock.sendall(data)


# -- routes ----------------------------------------------------------------------------------------


@bp.post("/generations")
def create_generation() -> tuple[Response, int, dict[str, str]]:
    submitted = submit_generation(json_body())
    return jsonify(submitted.payload), 202, submitted.headers


@bp.get("/generations/<generation_id>")
def get_generation(generation_id: str) -> Response:
    meta = load_meta(generation_id)
    s = services()
    text = streams.load_text(s.redis, generation_id)
    record = GenerationRecord.from_meta(generation_id, {**meta, "text": text}).public()
    record["readers"] = s.presence.readers([f"g:{generation_id}"])[f"g:{generation_id}"]
    return jsonify(record)


def _records(generation_ids: list[str]) -> list[dict[str, Any] | None]:
    """The public records of several generations in one round trip (None for one that expired)."""
    client = services().redis
    pipe = client.pipeline(transaction=False)
    for generation_id in generation_ids:
        pipe.hgetall(keys.gen_meta(generation_id))
        pipe.get(keys.gen_text(generation_id))
    results = pipe.execute()
    readers = services().presence.readers([f"g:{generation_id}" for generation_id in generation_ids])
    records: list[dict[str, Any] | None] = []
    for index, generation_id in enumerate(generation_ids):
        meta, text = results[2 * index], results[2 * index + 1]
        if not meta:
            records.append(None)
            continue
        text = text if text is not None else meta.get("text", "")
        record = GenerationRecord.from_meta(generation_id, {**meta, "text": text}).public()
        record["readers"] = readers[f"g:{generation_id}"]
        records.append(record)
    return records


@bp.post("/generations/<generation_id>/cancel")
def cancel_generation(generation_id: str) -> tuple[Response, int]:
    load_meta(generation_id)
    _cancel(services(), generation_id)
    return jsonify({"id": generation_id, "status": "cancelling"}), 202


def _cancel(s: Services, generation_id: str) -> None:
    """Request cancellation; raises ApiError 404 or 409. Needs no app context (the WebSocket reader calls it)."""
    result = streams.cancel(s.redis, generation_id, max_length=s.settings.redis_stream_max_length)
    if result == AbortResult.UNKNOWN:
        raise ApiError(404, "not_found", f"No generation with id {generation_id!r}.")
    if result == AbortResult.FINISHED:
        raise ApiError(409, "already_finished", "The generation has already finished.")
    logger.info("Generation %s cancellation requested.", generation_id, extra={"generation_id": generation_id})


@bp.get("/generations/<generation_id>/events")
def generation_events(generation_id: str) -> Response:
    meta = load_meta(generation_id)
    cursor = read_cursor()
    key = keys.gen_out(generation_id)
    if _ended_before(key, cursor, meta):
        # The client already has the terminal event: 204 tells EventSource to stop reconnecting.
        return Response(status=204, headers=_STREAM_HEADERS)
    return _event_stream(
        key, cursor, stop_at_terminal=True, on_gap=_generation_reset(generation_id), generation_id=generation_id
    )


@bp.post("/generations/<generation_id>/token")
def generation_token(generation_id: str) -> Response:
    load_meta(generation_id)
    auth = services().auth
    return jsonify(
        {"stream_token": auth.stream_token(generation_id=generation_id), "expires_at": auth.token_expires_at()}
    )


@bp.get("/sessions/<session_id>/events")
def session_events(session_id: str) -> Response:
    check_session(session_id)
    return _event_stream(keys.session_out(session_id), read_cursor(), stop_at_terminal=False, session_id=session_id)


@bp.get("/sessions/<session_id>/generations")
def session_generations(session_id: str) -> Response:
    check_session(session_id)
    limit = limit_arg(default=20, most=100)
    s = services()
    ids = streams.session_generation_ids(s.redis, session_id, limit + 1)
    records = [record for record in _records(ids[:limit]) if record is not None]
    return jsonify({"data": records, "has_more": len(ids) > limit})


@bp.post("/sessions/<session_id>/token")
def session_token(session_id: str) -> Response:
    check_session(session_id)
    auth = services().auth
    token = auth.stream_token(session_id=session_id)
    return jsonify({"stream_token": token, "expires_at": auth.token_expires_at()})


@sock.route("/generations/<generation_id>/ws", bp=bp)  # type: ignore[untyped-decorator]
def generation_ws(ws: Any, generation_id: str) -> None:
    s = services()
    meta = load_meta(generation_id)
    cursor = read_cursor()
    key = keys.gen_out(generation_id)
    reset = _generation_reset(generation_id)
    send_lock = threading.Lock()
    principal = g.principal

    def send(*texts: str) -> None:
        with send_lock:
            _send_frames(ws, texts)

    def receive() -> None:
        while True:
            try:
                message = ws.receive()
            except ConnectionClosed:
                return
            try:
                command = orjson.loads(message)
            except (orjson.JSONDecodeError, TypeError):
                command = None
            if isinstance(command, dict) and command.get("type") == "cancel":
                if not principal.may(Action.CANCEL):
                    send('{"type":"error","error":{"code":"insufficient_scope","message":"This key may not cancel."}}')
                    continue
                try:
                    _cancel(s, generation_id)
                except ApiError as exc:
                    send(orjson.dumps({"type": "error", "error": {"code": exc.code, "message": exc.message}}).decode())
                except redis.RedisError:
                    send('{"type":"error","error":{"code":"redis_unavailable","message":"Retry shortly."}}')
            else:
                send('{"type":"error","error":{"code":"bad_message","message":"Send {\\"type\\": \\"cancel\\"}."}}')

    threading.Thread(target=receive, name=f"ws-{generation_id}", daemon=True).start()
    if _ended_before(key, cursor, meta):
        ws.close(reason=1000, message="finished")
        return
    if cursor != "0":
        metrics.RESUMES.labels("ws").inc()
    sent = metrics.BufferedCount(metrics.EVENTS_SENT.labels("ws"))
    open_streams = metrics.OPEN_STREAMS.labels("ws")
    open_streams.inc()
    with s.presence.watching(generation_id=generation_id):
        try:
            for batch in follow(
                s.hub,
                s.redis,
                key,
                cursor,
                keepalive_s=s.settings.sse_keepalive_s,
                max_duration_s=s.settings.stream_max_duration_s,
                on_gap=reset,
            ):
                if not ws.connected:
                    return
                if batch is None:
                    continue
                send(*map(ws_frame, batch))
                sent.add(len(batch))
                if batch[-1].terminal:
                    with send_lock:
                        ws.close(reason=1000, message="finished")
                    return
            # Maximum duration reached: 1012 (service restart) tells the client to reconnect and resume.
            ws.close(reason=1012, message="resume")
        except redis.RedisError:
            ws.close(reason=1011, message="store unavailable")
        finally:
            sent.flush()
            open_streams.dec()

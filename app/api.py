"""The ``/v1`` HTTP API: create, get and cancel generations; read them over SSE and WebSocket."""

from __future__ import annotations

import hashlib
import logging
import re
import socket
import threading
from collections.abc import Iterator
from typing import Any

import orjson
import redis
from flask import Blueprint, Response, g, jsonify, request
from pydantic import ValidationError
from simple_websocket import ConnectionClosed

from app import metrics
from app.errors import ApiError
from app.extensions import sock
from app.hub import id_after
from app.services import Services, services
from app.streaming import KEEPALIVE_FRAME, GapHandler, follow, sse_frame, ws_frame
from bridge import keys, streams
from bridge.constants import send_generation
from bridge.events import ClientEvent, EventType
from bridge.generation import ID_PATTERN, GenerationRecord, GenerationRequest, new_generation_id, new_session_id
from bridge.models import BUILTIN_MODELS, available_models, parse_options
from bridge.streams import AbortResult, parse_stream_id

logger = logging.getLogger(__name__)

bp = Blueprint("api", __name__, url_prefix="/v1")

_ID = re.compile(ID_PATTERN)
_STREAM_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


@bp.before_request
def _authenticate() -> None:
    s = services()
    g.principal = s.auth.authenticate(request.headers.get("Authorization"), request.args.get("token"))
    if request.endpoint == "api.generation_ws" and request.view_args:
        # Refuse with an HTTP error before the upgrade: a browser cannot read a WebSocket close reason.
        _load_meta(request.view_args["generation_id"])
        _cursor()


# -- helpers ---------------------------------------------------------------------------------------


def _json_body() -> dict[str, Any]:
    if request.mimetype != "application/json":
        raise ApiError(415, "unsupported_media_type", "Send the body as JSON with 'Content-Type: application/json'.")
    raw = request.get_data(cache=False)
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, "malformed_json", f"The body is not valid JSON: {exc}.") from None
    if not isinstance(body, dict):
        raise ApiError(422, "validation_failed", "The body must be a JSON object.", details=[])
    return body


def _validation_details(exc: ValidationError, prefix: tuple[str | int, ...] = ()) -> list[dict[str, Any]]:
    return [
        {
            "field": ".".join(str(part) for part in (*prefix, *error["loc"])) or "body",
            "message": error["msg"],
            "type": error["type"],
        }
        for error in exc.errors(include_url=False)
    ]


def _checked_id(value: str, what: str) -> str:
    if not _ID.match(value):
        raise ApiError(404, "not_found", f"No {what} with id {value!r}.")
    return value


def _cursor() -> str:
    value = request.headers.get("Last-Event-ID") or request.args.get("last_event_id") or "0"
    value = value.strip()
    if value != "0" and parse_stream_id(value) is None:
        raise ApiError(400, "invalid_last_event_id", "Last-Event-ID must be an event id received from this stream.")
    return value


def _load_meta(generation_id: str) -> dict[str, str]:
    _checked_id(generation_id, "generation")
    if not g.principal.may_read_generation(generation_id):
        raise ApiError(403, "forbidden", "This stream token is for another generation.")
    meta = streams.load_meta(services().redis, generation_id)
    if not meta:
        raise ApiError(404, "not_found", f"No generation with id {generation_id!r}.")
    return meta


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
        values: Any = client.hmget(keys.gen_meta(generation_id), ["text", "last_id"])
        text, last_id = values[0] or "", values[1]
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
        # :meta holds the text since the last restart; with a restart among the kept entries the reader
        # discards what came before anyway.
        before = text[: len(text) - len(kept)] if not restarted and text.endswith(kept) else ""
        data = {"reason": "cursor_trimmed", "text": before, "next_seq": oldest_seq}
        logger.info("Generation %s: cursor %s was trimmed; sent a reset.", generation_id, cursor)
        return ClientEvent(id=streams.previous_id(oldest.id), event="reset", data=orjson.dumps(data).decode())

    return reset


def _event_stream(key: str, cursor: str, *, stop_at_terminal: bool, on_gap: GapHandler | None = None) -> Response:
    s = services()
    if cursor != "0":
        metrics.RESUMES.labels("sse").inc()
    sent = metrics.EVENTS_SENT.labels("sse")
    open_streams = metrics.OPEN_STREAMS.labels("sse")
    _bound_writes(request.environ.get("gunicorn.socket"), s.settings.sse_send_timeout_s)

    def body() -> Iterator[str]:
        open_streams.inc()
        yield "retry: 1000\n\n"
        try:
            for event in follow(
                s.hub,
                s.redis,
                key,
                cursor,
                keepalive_s=s.settings.sse_keepalive_s,
                max_duration_s=s.settings.stream_max_duration_s,
                stop_at_terminal=stop_at_terminal,
                on_gap=on_gap,
            ):
                if event is None:
                    yield KEEPALIVE_FRAME
                else:
                    yield sse_frame(event)
                    sent.inc()
        except redis.RedisError as exc:
            # End the response; the client resumes from its Last-Event-ID once Redis is back.
            logger.warning("Stream %s ended early: %s", key, exc)
        finally:
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


def _enqueue(generation_id: str) -> None:
    s = services()
    try:
        send_generation(s.celery, generation_id)
    except Exception as exc:
        logger.error("Could not enqueue generation %s: %s", generation_id, exc, extra={"generation_id": generation_id})
        streams.abort(
            s.redis,
            generation_id,
            EventType.ERROR.value,
            {"code": "enqueue_failed", "message": "The task queue is unavailable."},
            max_length=s.settings.redis_stream_max_length,
        )
        raise ApiError(
            503,
            "queue_unavailable",
            "The task queue is unavailable; retry shortly.",
            headers={"Retry-After": str(s.settings.redis_retry_after_s)},
        ) from None


def _model_errors(model: Any, options: Any) -> list[dict[str, Any]]:
    """Unknown model, or options the model does not accept."""
    if not isinstance(model, str) or not model:
        return []  # reported by the request model
    if model not in BUILTIN_MODELS:
        return [
            {
                "field": "model",
                "message": f"Unknown model {model!r}; available: {', '.join(available_models())}.",
                "type": "unknown_model",
                "available": available_models(),
            }
        ]
    if options is not None and not isinstance(options, dict):
        return []  # reported by the request model
    try:
        parse_options(model, options)
    except ValidationError as exc:
        return _validation_details(exc, ("options",))
    return []


# -- routes ----------------------------------------------------------------------------------------


@bp.post("/generations")
def create_generation() -> tuple[Response, int, dict[str, str]]:
    s = services()
    if g.principal.kind == "stream_token":
        raise ApiError(403, "forbidden", "Creating a generation needs an API key, not a stream token.")
    body = _json_body()
    details = _model_errors(body.get("model"), body.get("options"))
    try:
        req = GenerationRequest.model_validate(body)
    except ValidationError as exc:
        details = _validation_details(exc) + details
        raise ApiError(422, "validation_failed", "The request is not valid.", details=details) from None
    if req.max_tokens is not None and req.max_tokens > s.settings.max_tokens_limit:
        details.append(
            {
                "field": "max_tokens",
                "message": f"max_tokens may be at most {s.settings.max_tokens_limit}.",
                "type": "less_than_equal",
            }
        )
    if details:
        raise ApiError(422, "validation_failed", "The request is not valid.", details=details)

    generation_id = new_generation_id()
    session_id = req.session_id or new_session_id()
    idempotency_key = _claim_idempotency_key(body, generation_id, session_id)
    if isinstance(idempotency_key, dict):
        headers = {"Location": f"/v1/generations/{idempotency_key['id']}", "Idempotent-Replayed": "true"}
        return jsonify(idempotency_key), 202, headers
    try:
        streams.create_generation(
            s.redis,
            generation_id=generation_id,
            session_id=session_id,
            model=req.model,
            request=req.model_dump(mode="json", exclude_none=True),
            group=s.settings.redis_consumer_group,
            retention_ms=s.settings.redis_stream_retention_ms,
        )
        _enqueue(generation_id)
    except Exception:
        if idempotency_key is not None:
            s.redis.delete(idempotency_key)  # nothing was started: the same key may be tried again
        raise
    metrics.GENERATIONS_CREATED.labels(req.model).inc()
    logger.info(
        "Generation %s created (model %s).",
        generation_id,
        req.model,
        extra={"generation_id": generation_id, "session_id": session_id, "api_key": g.principal.name},
    )
    payload = _created(generation_id, session_id, req.model, "queued")
    return jsonify(payload), 202, {"Location": f"/v1/generations/{generation_id}"}


def _created(generation_id: str, session_id: str, model: str, status: str) -> dict[str, Any]:
    auth = services().auth
    return {
        "id": generation_id,
        "session_id": session_id,
        "status": status,
        "model": model,
        "events_url": f"/v1/generations/{generation_id}/events",
        "ws_url": f"/v1/generations/{generation_id}/ws",
        "stream_token": auth.stream_token(generation_id=generation_id),
        "session_events_url": f"/v1/sessions/{session_id}/events",
        "session_stream_token": auth.stream_token(session_id=session_id),
    }


def _claim_idempotency_key(body: dict[str, Any], generation_id: str, session_id: str) -> str | dict[str, Any] | None:
    """Reserve the request's Idempotency-Key for this generation (its Redis key), or the earlier response."""
    value = request.headers.get("Idempotency-Key")
    if value is None:
        return None
    if not 1 <= len(value) <= 255 or not value.isascii() or not value.isprintable():
        raise ApiError(400, "invalid_idempotency_key", "Idempotency-Key must be 1 to 255 printable ASCII characters.")
    s = services()
    fingerprint = hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()
    key = keys.idempotency(g.principal.name, hashlib.sha256(value.encode()).hexdigest())
    record = {"id": generation_id, "session_id": session_id, "model": body.get("model"), "fingerprint": fingerprint}
    if s.redis.set(key, orjson.dumps(record), nx=True, px=s.settings.idempotency_ttl_s * 1000):
        return key
    stored = s.redis.get(key)
    if stored is None:  # expired between the two calls: treat as new
        s.redis.set(key, orjson.dumps(record), px=s.settings.idempotency_ttl_s * 1000)
        return key
    earlier = orjson.loads(stored)
    if earlier["fingerprint"] != fingerprint:
        raise ApiError(409, "idempotency_key_reused", "This Idempotency-Key was used with a different request body.")
    status = s.redis.hget(keys.gen_meta(earlier["id"]), "status") or "queued"
    return _created(earlier["id"], earlier["session_id"], earlier["model"], str(status))


@bp.get("/generations/<generation_id>")
def get_generation(generation_id: str) -> Response:
    meta = _load_meta(generation_id)
    return jsonify(GenerationRecord.from_meta(generation_id, meta).public())


@bp.post("/generations/<generation_id>/cancel")
def cancel_generation(generation_id: str) -> tuple[Response, int]:
    _load_meta(generation_id)
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
    meta = _load_meta(generation_id)
    cursor = _cursor()
    key = keys.gen_out(generation_id)
    if _ended_before(key, cursor, meta):
        # The client already has the terminal event: 204 tells EventSource to stop reconnecting.
        return Response(status=204, headers=_STREAM_HEADERS)
    return _event_stream(key, cursor, stop_at_terminal=True, on_gap=_generation_reset(generation_id))


@bp.get("/sessions/<session_id>/events")
def session_events(session_id: str) -> Response:
    _checked_id(session_id, "session")
    if not g.principal.may_read_session(session_id):
        raise ApiError(403, "forbidden", "This stream token is for another session.")
    if not services().redis.exists(keys.session_index(session_id)):
        raise ApiError(404, "not_found", f"No session with id {session_id!r}.")
    return _event_stream(keys.session_out(session_id), _cursor(), stop_at_terminal=False)


@sock.route("/generations/<generation_id>/ws", bp=bp)  # type: ignore[untyped-decorator]
def generation_ws(ws: Any, generation_id: str) -> None:
    s = services()
    meta = _load_meta(generation_id)
    cursor = _cursor()
    key = keys.gen_out(generation_id)
    reset = _generation_reset(generation_id)
    send_lock = threading.Lock()

    def send(text: str) -> None:
        with send_lock:
            ws.send(text)

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
    sent = metrics.EVENTS_SENT.labels("ws")
    open_streams = metrics.OPEN_STREAMS.labels("ws")
    open_streams.inc()
    try:
        for event in follow(
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
            if event is None:
                continue
            send(ws_frame(event))
            sent.inc()
            if event.terminal:
                with send_lock:
                    ws.close(reason=1000, message="finished")
                return
        # Maximum duration reached: 1012 (service restart) tells the client to reconnect and resume.
        ws.close(reason=1012, message="resume")
    except redis.RedisError:
        ws.close(reason=1011, message="store unavailable")
    finally:
        open_streams.dec()

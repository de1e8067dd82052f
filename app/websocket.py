"""The WebSocket of a generation: ``client_events`` written as JSON messages, and ``cancel`` commands read."""

from __future__ import annotations

import contextlib
import logging
import threading
from contextlib import closing
from dataclasses import dataclass
from typing import Any

import orjson
import redis
from flask import Blueprint, g, request
from simple_websocket import ConnectionClosed

from app import audit
from app.auth import Action, Principal
from app.cancellation import request_cancel
from app.client_events import Batches, client_events, ended_before, generation_reset
from app.errors import ApiError
from app.extensions import sock
from app.inputs import authenticate, load_meta, read_cursor
from app.origins import check_origin
from app.services import Services, services
from app.streaming import ws_frame
from app.ws_connection import WebSocket
from bridge import keys, tracing

logger = logging.getLogger(__name__)

bp = Blueprint("websocket", __name__, url_prefix="/v1")

_BAD_MESSAGE = '{"type":"error","error":{"code":"bad_message","message":"Send {\\"type\\": \\"cancel\\"}."}}'
_MAY_NOT_CANCEL = '{"type":"error","error":{"code":"insufficient_scope","message":"This key may not cancel."}}'
_REDIS_UNAVAILABLE = '{"type":"error","error":{"code":"redis_unavailable","message":"Retry shortly."}}'


@bp.before_request
def _authenticate() -> None:
    authenticate()
    if request.endpoint == "websocket.generation_ws" and request.view_args:
        # permessage-deflate is declined (browsers offer it): an event is a hundred bytes, and compressing each one
        # cost more web CPU than sending it (see _Writer).
        request.environ.pop("HTTP_SEC_WEBSOCKET_EXTENSIONS", None)
        # Refuse with an HTTP error before the upgrade: a browser cannot read a WebSocket close reason.
        check_origin()
        load_meta(request.view_args["generation_id"])
        read_cursor()


@sock.route("/generations/<generation_id>/ws", bp=bp)  # type: ignore[untyped-decorator]
def generation_ws(server: Any, generation_id: str) -> None:
    ws = WebSocket.adopt(server)
    s = services()
    meta = load_meta(generation_id)
    cursor = read_cursor()
    key = keys.gen_out(generation_id)
    on_gap = generation_reset(generation_id, meta)
    writer = _Writer(ws)
    commands = _Commands(s, g.principal, generation_id, audit.request_fields(), crossing=audit.crossing())
    reader = threading.Thread(
        target=_read_commands, args=(ws, writer, commands), name=f"ws-{generation_id}", daemon=True
    )
    reader.start()
    if ended_before(key, cursor, meta):
        ws.close(reason=1000, message="finished")
        return
    trace = meta.get(tracing.META_FIELD, "")
    _write_events(ws, writer, client_events("ws", key, cursor, on_gap=on_gap, trace=trace, generation_id=generation_id))


class _Writer:
    """Writes to one WebSocket for both of its threads (the events, the answers to commands).

    A text message from a server is one unmasked frame (RFC 6455 5.2), and no extension is negotiated (see
    ``_authenticate``): the frames are built here, and a batch goes out in one socket write, instead of through
    wsproto's per-message machinery (its frame building, and a socket write per message). The connection keeps
    writes whole and in order (``WebSocket.send_frames``).
    """

    def __init__(self, ws: WebSocket) -> None:
        self._ws = ws

    def send(self, *texts: str) -> None:
        """Text messages in one socket write."""
        self._ws.send_frames(b"".join(map(_text_frame, texts)))

    def close(self, code: int, message: str) -> None:
        # A client already gone has nothing to be told.
        with contextlib.suppress(ConnectionClosed, OSError):
            self._ws.close(reason=code, message=message)


def _text_frame(text: str) -> bytes:
    """One final, unmasked text frame."""
    payload = text.encode()
    size = len(payload)
    if size < 126:
        return bytes((0x81, size)) + payload
    if size < 65536:
        return b"\x81\x7e" + size.to_bytes(2, "big") + payload
    return b"\x81\x7f" + size.to_bytes(8, "big") + payload


def _write_events(ws: WebSocket, writer: _Writer, events: Batches) -> None:
    """Every batch as JSON messages, then the close: 1000 after the terminal event, 1012 at the maximum duration."""
    ended = False
    try:
        with closing(events):
            for batch in events:
                if not ws.connected:
                    return
                if batch is not None:
                    writer.send(*map(ws_frame, batch))
                    ended = batch[-1].terminal
    except redis.RedisError:
        writer.close(1011, "store unavailable")
        return
    except (ConnectionClosed, OSError) as exc:
        # The client went away mid-send (reset, broken pipe): it resumes from its last event when it comes back.
        logger.debug("A WebSocket client went away while it was sent events: %s", exc)
        return
    # Maximum duration reached: 1012 (service restart) tells the client to reconnect and resume.
    writer.close(*((1000, "finished") if ended else (1012, "resume")))


@dataclass(frozen=True)
class _Commands:
    """What answering a WebSocket's commands takes: the caller, its generation, and its request's audit fields."""

    s: Services
    principal: Principal
    generation_id: str
    audit_fields: dict[str, Any]
    crossing: bool  # an admin key on another owner's generation: its cancel is recorded


def _read_commands(ws: WebSocket, writer: _Writer, commands: _Commands) -> None:
    """Answer the client's messages until the socket closes: ``{"type": "cancel"}`` or an error message."""
    while True:
        try:
            message = ws.receive()
        except ConnectionClosed:
            return
        answer = _command_answer(message, commands)
        if answer is not None:
            try:
                writer.send(answer)
            except (ConnectionClosed, OSError):
                return


def _command_answer(message: Any, commands: _Commands) -> str | None:
    """The error message a client's message gets back; None when it asked for a cancellation that was requested."""
    try:
        command = orjson.loads(message)
    except (orjson.JSONDecodeError, TypeError):
        command = None
    if not (isinstance(command, dict) and command.get("type") == "cancel"):
        return _BAD_MESSAGE
    if not commands.principal.may(Action.CANCEL):
        audit.record("access.refused", "insufficient_scope", **commands.audit_fields)
        return _MAY_NOT_CANCEL
    outcome, answer = "ok", None
    try:
        request_cancel(commands.s, commands.generation_id)
    except ApiError as exc:
        outcome = exc.code
        answer = orjson.dumps({"type": "error", "error": {"code": exc.code, "message": exc.message}}).decode()
    except redis.RedisError:
        outcome, answer = "redis_unavailable", _REDIS_UNAVAILABLE
    if commands.crossing:
        audit.record("admin.cancel", outcome, **commands.audit_fields)
    return answer

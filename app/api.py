"""The ``/v1`` generations and sessions as JSON: create, get and cancel generations, list sessions, mint tokens.

Their streams are in ``app/sse.py`` and ``app/websocket.py``.
"""

from __future__ import annotations

from flask import Blueprint, Response

from app.cancellation import request_cancel
from app.inputs import authenticate, check_session, json_body, limit_arg, load_meta
from app.responses import json_response
from app.schemas import CancelAccepted, Generation, SessionGenerations, StreamToken
from app.services import services
from app.submit import submit_generation
from bridge import keys, streams
from bridge.generation import GenerationRecord

bp = Blueprint("api", __name__, url_prefix="/v1")

bp.before_request(authenticate)


@bp.post("/generations")
def create_generation() -> Response:
    submitted = submit_generation(json_body())
    return json_response(submitted.payload, 202, submitted.headers)


@bp.get("/generations/<generation_id>")
def get_generation(generation_id: str) -> Response:
    meta = load_meta(generation_id)
    s = services()
    text = streams.load_text(s.redis, generation_id)
    record = GenerationRecord.from_meta(generation_id, {**meta, "text": text})
    return json_response(Generation.of(record, s.presence.readers([f"g:{generation_id}"])[f"g:{generation_id}"]))


def _records(generation_ids: list[str]) -> list[Generation | None]:
    """The public records of several generations in one round trip (None for one that expired)."""
    client = services().redis
    pipe = client.pipeline(transaction=False)
    for generation_id in generation_ids:
        pipe.hgetall(keys.gen_meta(generation_id))
        pipe.get(keys.gen_text(generation_id))
    results = pipe.execute()
    readers = services().presence.readers([f"g:{generation_id}" for generation_id in generation_ids])
    records: list[Generation | None] = []
    for index, generation_id in enumerate(generation_ids):
        meta, text = results[2 * index], results[2 * index + 1]
        if not meta:
            records.append(None)
            continue
        text = text if text is not None else meta.get("text", "")
        record = GenerationRecord.from_meta(generation_id, {**meta, "text": text})
        records.append(Generation.of(record, readers[f"g:{generation_id}"]))
    return records


@bp.post("/generations/<generation_id>/cancel")
def cancel_generation(generation_id: str) -> Response:
    load_meta(generation_id)
    request_cancel(services(), generation_id)
    return json_response(CancelAccepted(id=generation_id, status="cancelling"), 202)


@bp.post("/generations/<generation_id>/token")
def generation_token(generation_id: str) -> Response:
    load_meta(generation_id)
    auth = services().auth
    token = auth.stream_token(generation_id=generation_id, read_only=True)
    return json_response(StreamToken(stream_token=token, expires_at=auth.token_expires_at()))


@bp.get("/sessions/<session_id>/generations")
def session_generations(session_id: str) -> Response:
    check_session(session_id)
    limit = limit_arg(default=20, most=100)
    s = services()
    ids = streams.session_generation_ids(s.redis, session_id, limit + 1)
    records = [record for record in _records(ids[:limit]) if record is not None]
    return json_response(SessionGenerations(data=records, has_more=len(ids) > limit))


@bp.post("/sessions/<session_id>/token")
def session_token(session_id: str) -> Response:
    check_session(session_id)
    auth = services().auth
    token = auth.stream_token(session_id=session_id, read_only=True)
    return json_response(StreamToken(stream_token=token, expires_at=auth.token_expires_at()))

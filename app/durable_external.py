"""An external generation written with the Durable Streams protocol: ``POST /v1/stream/generations/{id}``.

A Durable Streams client (or its idempotent producer) appends to a generation of an ``external`` model as to any
JSON stream: each message is the text of one token (a JSON string; an array is a batch of them), ``Stream-Closed:
true`` ends the generation (``done``, ``finish_reason`` ``stop``). The tokens go through the processor chain like
every producer's; readers of the generation (SSE, WebSocket, ``GET /v1/stream/generations/{id}``) get the events
the chain commits. The producer headers map onto the generation's record: each producer id's epoch and last
sequence, checked and updated with the append in one script (bridge/lua/external_ds_append.lua).
"""

from __future__ import annotations

import orjson
from flask import Blueprint, Response, request

from app.durable_streams import closed_header, offset_of, producer_headers, security_headers
from app.errors import ApiError
from app.inputs import authenticate, load_meta
from app.producers import MAX_BATCH, MAX_TOKEN_CHARS
from app.services import services
from bridge import durable_store
from bridge.external import StreamAppend, append_stream_batch, finish
from bridge.scripts import Status

bp = Blueprint("durable_external", __name__, url_prefix="/v1/stream")
bp.before_request(authenticate)


bp.after_request(security_headers)


@bp.post("/generations/<generation_id>")
def append_generation(generation_id: str) -> Response:
    meta = load_meta(generation_id)  # 404 for an unknown generation, or another owner's
    if meta.get("model") != "external":
        raise ApiError(409, "not_external", "Only a generation of model 'external' takes appends.")
    producer = producer_headers()
    close = closed_header()
    tokens = _tokens(request.get_data())
    if not tokens and not close:
        raise ApiError(400, "empty_body", "An append needs a body (or Stream-Closed: true to end the generation).")
    s = services()
    producer_key = (producer.id, producer.epoch, producer.seq) if producer else None
    result = append_stream_batch(s.redis, generation_id, tokens, settings=s.settings, producer=producer_key)
    tail = meta.get("last_id") or "0-0"
    if result.status is Status.FINISHED:
        headers = {"Stream-Closed": "true", "Stream-Next-Offset": offset_of(tail)}
        if close and not tokens:
            return Response(status=204, headers=headers)  # closing what is closed: done already
        raise ApiError(409, "stream_closed", "The generation has ended: it takes no more tokens.", headers=headers)
    _refused(result)
    headers = {}
    if producer is not None:
        headers |= {"Producer-Epoch": str(producer.epoch)}
        headers["Producer-Seq"] = result.values[0] if result.status is Status.DUPLICATE else str(producer.seq)
    if result.status is Status.DUPLICATE:
        return Response(status=204, headers=headers)
    last_id = result.values[1] if len(result.values) > 1 and result.values[1] else tail
    headers["Stream-Next-Offset"] = offset_of(last_id)
    if close:
        finish(s.redis, generation_id, settings=s.settings, finish_reason="stop")
        headers["Stream-Closed"] = "true"
    return Response(status=200 if producer is not None and tokens else 204, headers=headers)


def _tokens(body: bytes) -> list[str]:
    """The tokens of a JSON body: a string, or an array of strings (one level flattened); 409 for another content
    type (the stream is ``application/json``), 400 for anything else."""
    if not body:
        return []
    given = request.headers.get("Content-Type")
    if not given:
        raise ApiError(400, "missing_content_type", "An append needs a Content-Type (application/json).")
    if durable_store.media_type(given) != durable_store.JSON:
        raise ApiError(409, "content_type_mismatch", "A generation's stream is application/json.")
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, "invalid_body", f"The body is not valid JSON: {exc}") from None
    tokens = value if isinstance(value, list) else [value]
    if not tokens:
        raise ApiError(400, "invalid_body", "An append of an empty JSON array adds nothing.")
    if len(tokens) > MAX_BATCH:
        raise ApiError(400, "invalid_body", f"At most {MAX_BATCH} tokens per append.")
    for position, token in enumerate(tokens):
        if not isinstance(token, str) or len(token) > MAX_TOKEN_CHARS:
            raise ApiError(
                400, "invalid_body", f"Message {position} is not a token: a JSON string of at most {MAX_TOKEN_CHARS}."
            )
    return tokens


def _refused(result: StreamAppend) -> None:
    """The producer's or the generation's refusal, as the protocol answers it."""
    status, values = result.status, result.values
    if status is Status.UNKNOWN:
        raise ApiError(404, "not_found", "No such generation.")
    if status is Status.NOT_EXTERNAL:
        raise ApiError(409, "not_external", "Only a generation of model 'external' takes appends.")
    if status is Status.STALE_EPOCH:
        headers = {"Producer-Epoch": values[0]}
        raise ApiError(403, "stale_epoch", "A newer epoch of this producer writes.", headers=headers)
    if status is Status.BAD_EPOCH_SEQ:
        raise ApiError(400, "invalid_producer", "A new epoch starts at Producer-Seq 0.")
    if status is Status.GAP:
        headers = {"Producer-Expected-Seq": values[0], "Producer-Received-Seq": values[1]}
        raise ApiError(409, "sequence_gap", "An earlier Producer-Seq of this epoch is missing.", headers=headers)

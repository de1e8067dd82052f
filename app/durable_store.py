"""Streams of the Durable Streams protocol that clients create and write: ``PUT``, ``POST``, ``DELETE``, ``GET`` and
``HEAD /v1/stream/{name}`` (any name but ``generations/…`` and ``sessions/…``, which are tokenbridge's own, read
only: ``app.durable_streams``).

What they keep is ``bridge.durable_store``'s; this module speaks the protocol: its headers, status codes, JSON
mode, idempotent producers, closure, TTL and expiry, forks; ``app.durable_reads`` answers its catch-up, long-poll and
SSE reads. A stream belongs to the API key's owner that created it;
with ``DURABLE_STREAMS_PUBLIC``, a request without credentials may create and use streams that belong to nobody
(for the protocol's conformance suite and local tests, never a deployment).
"""

from __future__ import annotations

import re
import time
from datetime import datetime

from flask import Blueprint, Response, g, request

from app import durable_reads as reads
from app.durable_streams import (
    closed_header,
    id_of,
    offset_of,
    producer_headers,
    read_params,
    security_headers,
)
from app.errors import ApiError, out_of_memory
from app.inputs import authenticate, refuse_body
from app.services import services
from bridge import durable_store as store
from bridge.durable_store import Info, Producer
from bridge.scripts import Status

bp = Blueprint("durable_store", __name__, url_prefix="/v1/stream")

# Names tokenbridge serves itself (read only).
RESERVED = ("generations/", "sessions/", "__ds/")
# The protocol's integers: digits only, no sign, no leading zero, at most 2^53 - 1 (JavaScript's safe integers).
_INTEGER = re.compile(r"0|[1-9][0-9]*")
_MAX_SAFE = 2**53 - 1
_MEDIA_TYPE = re.compile(r"^[\w.+-]+/[\w.+-]+")


@bp.before_request
def _identify() -> None:
    """An API key or stream token as on every route; without credentials, with ``DURABLE_STREAMS_PUBLIC``, the
    public streams only."""
    if request.method in ("PUT", "POST", "DELETE"):
        _name((request.view_args or {}).get("name", ""))  # tokenbridge's own streams: 405 before anything else
    credentials = request.headers.get("Authorization") or request.args.get("token")
    g.ds_public = services().settings.durable_streams_public and not credentials
    if g.ds_public:
        refuse_body()
    else:
        authenticate()


bp.after_request(security_headers)


def _owner() -> str:
    """Whom a stream created now belongs to ('' for a public one)."""
    if g.ds_public:
        return ""
    principal = g.principal
    if principal.kind == "stream_token":
        raise ApiError(403, "forbidden", "A stream token reads its generation only; use an API key for streams.")
    return str(principal.owner or principal.name)


def _visible(info: Info | None) -> Info:
    """The stream, when it exists and the caller may use it; else 404 (another owner's is answered the same)."""
    if info is None:
        raise ApiError(404, "not_found", "No stream at this URL.")
    if g.ds_public:
        if info.owner:
            raise ApiError(404, "not_found", "No stream at this URL.")
        return info
    principal = g.principal
    if principal.kind == "stream_token" or not (principal.sees_everything or info.owner == _owner()):
        raise ApiError(404, "not_found", "No stream at this URL.")
    return info


def _live_stream(info: Info | None) -> Info:
    """``_visible``, and not deleted: a stream deleted while forks of it live answers 410."""
    visible = _visible(info)
    if visible.deleted:
        raise ApiError(410, "stream_deleted", "This stream was deleted (forks of it still read what they inherited).")
    return visible


def _name(name: str) -> str:
    if name.startswith(RESERVED) or name in ("generations", "sessions", "__ds"):
        raise ApiError(405, "method_not_allowed", f"{name!r} is read only here (tokenbridge's own streams).")
    return name


# -- writes ----------------------------------------------------------------------------------------------------


@bp.route("/<path:name>", methods=["PUT", "POST"])
def write_stream(name: str) -> Response:
    name = _name(name)
    if request.method == "PUT":
        return _create(name)
    return _append(name)


@bp.route("/<path:name>", methods=["DELETE"])
def delete_stream(name: str) -> Response:
    name = _name(name)
    _live_stream(store.info(services().redis, name))
    store.delete(services().redis, name)
    return Response(status=204)


def _room() -> None:
    """503 while Redis is nearly full (``REDIS_MEMORY_HEADROOM``): the generations running have room to finish."""
    s = services()
    if s.memory.full():
        raise out_of_memory(s.settings.redis_retry_after_s)


def _create(name: str) -> Response:
    s = services()
    body = request.get_data()  # first: a body over MAX_BODY_BYTES is a 413 before anything else
    _room()
    fork = _fork()
    source = _visible(store.info(s.redis, fork.source)) if fork else None
    if source is not None and source.deleted:
        raise ApiError(409, "stream_deleted", "The source stream was deleted: it cannot be forked.")
    given = request.headers.get("Content-Type", "").strip()
    content_type = given if _MEDIA_TYPE.match(given) else (source.content_type if source else store.OCTETS)
    kind = store.media_type(content_type)
    if source is not None and kind != source.content_type:
        raise ApiError(409, "content_type_mismatch", "A fork has its source's Content-Type.")
    ttl_s, expires_at, expire_at_ms = _expiry(source)
    try:
        messages = store.messages_of(kind, body, append=False)
    except store.BadBody as exc:
        raise ApiError(400, "invalid_body", str(exc)) from None
    inherited: list[tuple[str, str, str]] = []
    if fork is not None and source is not None:
        fork = store.Fork(fork.source, fork.at_id or source.tail, fork.sub, fork.offset)
        try:
            inherited = store.inherited(s.redis, source, fork.at_id, fork.sub)
        except store.BadFork as exc:
            raise ApiError(exc.status, "invalid_fork", str(exc)) from None
    created = store.create(
        s.redis,
        name,
        kind,
        messages,
        inherited=inherited,
        fork=fork,
        closed=closed_header(),
        ttl_s=ttl_s,
        expires_at=expires_at,
        expire_at_ms=expire_at_ms,
        retention_ms=s.settings.redis_stream_retention_ms,
        owner=_owner(),
        now_ms=int(time.time() * 1000),
    )
    if created.status is Status.CONFLICT:
        raise ApiError(409, "stream_exists", "A stream with another configuration is at this URL.")
    headers = {"Content-Type": content_type, "Stream-Next-Offset": offset_of(created.tail)}
    if created.closed:
        headers["Stream-Closed"] = "true"
    if created.status is Status.CREATED:
        headers["Location"] = request.base_url
        return Response(status=201, headers=headers)
    return Response(status=200, headers=headers)


def _fork() -> store.Fork | None:
    """``Stream-Forked-From`` (a path of this server's streams), ``Stream-Fork-Offset`` and
    ``Stream-Fork-Sub-Offset``, checked; None for a plain stream."""
    source = request.headers.get("Stream-Forked-From")
    offset = request.headers.get("Stream-Fork-Offset")
    sub = request.headers.get("Stream-Fork-Sub-Offset")
    if source is None:
        if offset is not None or sub is not None:
            raise ApiError(
                400, "invalid_fork", "Stream-Fork-Offset and Stream-Fork-Sub-Offset need Stream-Forked-From."
            )
        return None
    name = source.strip().removeprefix(bp.url_prefix or "").lstrip("/")
    if not name or name.startswith(RESERVED):
        raise ApiError(404, "not_found", "Stream-Forked-From names no stream of this server.")
    at_id = ""
    if offset is not None:
        at_id = id_of(offset.strip()) or ""
        if not at_id:
            raise ApiError(400, "invalid_fork", "Stream-Fork-Offset must be a Stream-Next-Offset of the source.")
    count = 0
    if sub is not None:
        if not _INTEGER.fullmatch(sub.strip()) or int(sub) > _MAX_SAFE:
            raise ApiError(400, "invalid_fork", "Stream-Fork-Sub-Offset must be a whole number.")
        count = int(sub)
        if count and offset is None:
            raise ApiError(400, "invalid_fork", "Stream-Fork-Sub-Offset needs Stream-Fork-Offset.")
    return store.Fork(name, at_id, count, offset.strip() if offset else "")


def _expiry(source: Info | None = None) -> tuple[int | None, str, int]:
    """``Stream-TTL`` (seconds) or ``Stream-Expires-At`` (as given, and in ms), never both; 400 for a bad value. A
    fork given neither has its source's (the protocol's table)."""
    ttl, expires = request.headers.get("Stream-TTL"), request.headers.get("Stream-Expires-At")
    if ttl is None and expires is None and source is not None:
        ttl, expires = source.ttl or None, source.expires_at or None
    if ttl is not None and expires is not None:
        raise ApiError(400, "invalid_expiry", "Give Stream-TTL or Stream-Expires-At, not both.")
    if ttl is not None:
        if not _INTEGER.fullmatch(ttl) or int(ttl) > _MAX_SAFE:
            raise ApiError(400, "invalid_ttl", "Stream-TTL must be a whole number of seconds (digits only).")
        return int(ttl), "", 0
    if expires is not None:
        try:
            at = datetime.fromisoformat(expires.strip().replace("Z", "+00:00").replace("z", "+00:00"))
        except ValueError:
            raise ApiError(400, "invalid_expires_at", "Stream-Expires-At must be an RFC 3339 time.") from None
        if at.tzinfo is None:
            raise ApiError(400, "invalid_expires_at", "Stream-Expires-At needs a time zone (Z or an offset).")
        return None, expires, max(1, int(at.timestamp() * 1000))
    return None, "", 0


def _append(name: str) -> Response:
    s = services()
    producer = producer_headers()
    body = request.get_data()
    close = closed_header()
    info = _live_stream(store.info(s.redis, name))
    if not body and not close:
        raise ApiError(400, "empty_body", "An append needs a body (or Stream-Closed: true to close).")
    if body:
        _room()
    given_type = request.headers.get("Content-Type")
    if body and not given_type:
        raise ApiError(400, "missing_content_type", "An append needs a Content-Type.")
    messages: list[tuple[str, str]] = []
    if body:
        kind = store.media_type(given_type)
        if not info.closed and kind == info.content_type:
            try:
                messages = store.messages_of(kind, body, append=True)
            except store.BadBody as exc:
                raise ApiError(400, "invalid_body", str(exc)) from None
        else:
            messages = [(store.BYTES, "")]  # refused by the script: closed first, then the type
    keep_ms = int(info.ttl) * 1000 if info.ttl not in ("", "0") else 0
    result = store.append(
        s.redis,
        name,
        store.media_type(given_type),
        messages,
        close=close,
        stream_seq=request.headers.get("Stream-Seq"),
        producer=producer,
        keep_ms=keep_ms,
    )
    return _appended(result, producer)


def _appended(result: store.Appended, producer: Producer | None) -> Response:
    status, values = result.status, result.values
    if status is Status.UNKNOWN:
        raise ApiError(404, "not_found", "No stream at this URL.")
    if status is Status.CLOSED:
        headers = {"Stream-Closed": "true", "Stream-Next-Offset": offset_of(values[0])}
        raise ApiError(409, "stream_closed", "The stream is closed: it takes no more appends.", headers=headers)
    if status is Status.CONFLICT:
        raise ApiError(409, "content_type_mismatch", "The Content-Type is not the stream's.")
    if status is Status.STALE_EPOCH:
        raise ApiError(
            403, "stale_epoch", "A newer epoch of this producer writes.", headers={"Producer-Epoch": values[0]}
        )
    if status is Status.BAD_EPOCH_SEQ:
        raise ApiError(400, "invalid_producer", "A new epoch starts at Producer-Seq 0.")
    if status is Status.GAP:
        headers = {"Producer-Expected-Seq": values[0], "Producer-Received-Seq": values[1]}
        raise ApiError(409, "sequence_gap", "An earlier Producer-Seq of this epoch is missing.", headers=headers)
    if status is Status.SEQ_CONFLICT:
        raise ApiError(409, "sequence_conflict", "Stream-Seq must be above the last one this stream took.")
    headers = {"Stream-Next-Offset": offset_of(values[0])}
    if values[1] == "1":
        headers["Stream-Closed"] = "true"
    if producer is not None:
        headers["Producer-Epoch"] = str(producer.epoch)
        headers["Producer-Seq"] = values[3] if status is Status.DUPLICATE and values[3] else str(producer.seq)
    # 200 for a producer's new data; 204 for an append without one, a close without data, or a duplicate.
    appended_data = status is Status.APPENDED and result.messages
    code = 200 if producer is not None and appended_data else 204
    return Response(status=code, headers=headers)


# -- reads (app.durable_reads) ---------------------------------------------------------------------------------


@bp.route("/<path:name>", methods=["GET", "HEAD"])
def read_stream(name: str) -> Response:
    s = services()
    info = _live_stream(store.info(s.redis, name))
    if request.method == "HEAD":
        return reads.head(info)
    offset, live = read_params()
    store.touch(s.redis, name, info.ttl)
    return reads.read(info, offset, live)

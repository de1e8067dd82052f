"""Streams created over the Durable Streams protocol (``PUT``/``POST``/``DELETE /v1/stream/{name}``): what they keep
in Redis and the two scripts that change them.

A stream is three keys under one hash tag (``keys.durable_stream``): ``meta`` (content type, closed, TTL or expiry,
owner, the last Stream-Seq, the id of the last message: ``tail``), ``out`` (one entry per message, read by the hub as
a generation's ``:out`` is) and ``producers`` (each idempotent producer's epoch and last sequence). A message is
kept as an ``event``/``data`` pair: ``j`` a JSON message (its JSON text), ``t`` text (UTF-8), ``b`` bytes (base64);
a closed stream ends with a ``closed`` entry that wakes live readers and is never an offset. Offsets are the entries'
ids (``app.durable_streams.offset_of``): appends are ordered by Redis, the same in every process.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson
import redis

from bridge import keys, scripts
from bridge.scripts import Status
from bridge.streams import id_after

JSON = "application/json"
OCTETS = "application/octet-stream"
START_ID = "0-0"
# Entry kinds (``event`` of an ``out`` entry): a JSON message (``J`` for the last one of its append, so that a fork
# knows where a batch ends), text, bytes, and the marker after the last message of a closed stream.
JSON_MESSAGE, JSON_LAST, TEXT, BYTES, CLOSED_MARKER = "j", "J", "t", "b", "closed"
JSON_KINDS = (JSON_MESSAGE, JSON_LAST)


class BadBody(ValueError):
    """A body the stream cannot take (JSON that does not parse, an empty JSON array in an append)."""


def media_type(content_type: str | None) -> str:
    """The media type of a ``Content-Type`` header, compared case-insensitively and without parameters."""
    return (content_type or "").split(";", 1)[0].strip().lower()


def is_text(content_type: str) -> bool:
    """Whether reads carry it as text (SSE without base64): ``text/*`` and JSON."""
    kind = media_type(content_type)
    return kind.startswith("text/") or kind == JSON


def messages_of(content_type: str, body: bytes, *, append: bool) -> list[tuple[str, str]]:
    """The entries a body becomes: one message per element of a JSON array (one level flattened) or one JSON value;
    for any other type, the bytes as one chunk. Raises ``BadBody``."""
    if media_type(content_type) == JSON:
        if not body.strip():
            if append:
                raise BadBody("An append to a JSON stream needs a JSON value.")
            return []
        try:
            value = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise BadBody(f"The body is not valid JSON: {exc}") from None
        values = value if isinstance(value, list) else [value]
        if append and isinstance(value, list) and not value:
            raise BadBody("An append of an empty JSON array adds nothing.")
        messages = [(JSON_MESSAGE, orjson.dumps(v).decode()) for v in values]
        if messages:
            messages[-1] = (JSON_LAST, messages[-1][1])
        return messages
    if not body:
        return []
    if media_type(content_type).startswith("text/"):
        try:
            return [(TEXT, body.decode())]
        except UnicodeDecodeError:
            pass
    return [(BYTES, base64.b64encode(body).decode())]


def payload(event: str, data: str) -> bytes:
    """The bytes of one entry as written (a JSON message's text, without the array around it)."""
    if event == BYTES:
        return base64.b64decode(data)
    return data.encode()


@dataclass(frozen=True, slots=True)
class Info:
    """A stream's configuration and state, from its ``meta``."""

    name: str
    content_type: str
    closed: bool
    tail: str
    ttl: str
    expires_at: str
    owner: str
    # Deleted while forks of it live (the protocol's soft delete): 410 to everyone until the last fork goes.
    deleted: bool = False
    forks: int = 0
    forked_from: str = ""

    @property
    def json(self) -> bool:
        return self.content_type == JSON


def info(client: redis.Redis, name: str) -> Info | None:
    meta: dict[str, str] = client.hgetall(keys.durable_stream(name, "meta"))  # type: ignore[assignment]
    if not meta:
        return None
    return Info(
        name=name,
        content_type=meta.get("type", OCTETS),
        closed=meta.get("closed") == "1",
        tail=meta.get("tail", START_ID),
        ttl=meta.get("ttl", ""),
        expires_at=meta.get("expires_at", ""),
        owner=meta.get("owner", ""),
        deleted=meta.get("deleted") == "1",
        forks=int(meta.get("forks") or 0),
        forked_from=meta.get("forked_from", ""),
    )


def _keys(name: str) -> list[str]:
    return [keys.durable_stream(name, part) for part in ("meta", "out", "producers")]


@dataclass(frozen=True, slots=True)
class Created:
    status: Status  # CREATED, EXISTS or CONFLICT
    tail: str = START_ID
    closed: bool = False


@dataclass(frozen=True, slots=True)
class Fork:
    """Where a fork diverges from its source: the source's name, the offset's id and the sub-offset."""

    source: str
    at_id: str
    sub: int = 0
    offset: str = ""  # the Stream-Fork-Offset as given ('' when it defaulted to the source's tail)


def create(
    client: redis.Redis,
    name: str,
    content_type: str,
    messages: list[tuple[str, str]],
    *,
    inherited: Sequence[tuple[str, str, str]] = (),
    fork: Fork | None = None,
    closed: bool,
    ttl_s: int | None,
    expires_at: str,
    expire_at_ms: int,
    retention_ms: int,
    owner: str,
    now_ms: int,
) -> Created:
    """``PUT``: create the stream with ``messages``, or compare with the one there."""
    keep_ms = ttl_s * 1000 if ttl_s else (0 if expire_at_ms else retention_ms)
    args: list[Any] = [name, content_type, "1" if closed else "", "" if ttl_s is None else str(ttl_s), expires_at]
    args += [expire_at_ms, keep_ms, owner, now_ms]
    args += [fork.source, fork.offset, fork.sub or ""] if fork else ["", "", ""]
    for entry in inherited:
        args += entry
    for event, data in messages:
        args += ["*", event, data]
    status, values = scripts.decode(scripts.run(client, scripts.DS_CREATE, _keys(name), args))
    if status is Status.CONFLICT:
        return Created(status)
    if status is Status.CREATED and fork is not None:
        client.hincrby(keys.durable_stream(fork.source, "meta"), "forks", 1)
    return Created(status, values[0], values[1] == "1")


@dataclass(frozen=True, slots=True)
class Appended:
    """``APPEND``'s answer: ``status`` and what follows it (see bridge/lua/ds_append.lua)."""

    status: Status
    values: list[str]
    messages: int = 0  # how many the request carried


@dataclass(frozen=True, slots=True)
class Producer:
    id: str
    epoch: int
    seq: int


def append(
    client: redis.Redis,
    name: str,
    content_type: str,
    messages: list[tuple[str, str]],
    *,
    close: bool,
    stream_seq: str | None,
    producer: Producer | None,
    keep_ms: int,
) -> Appended:
    """``POST``: append ``messages`` (none: a close), fenced by the producer's epoch and sequence and Stream-Seq."""
    args: list[Any] = [content_type if messages else "", "1" if close else "", stream_seq or ""]
    args += [producer.id, producer.epoch, producer.seq] if producer else ["", 0, 0]
    args.append(keep_ms)
    for event, data in messages:
        args += [event, data]
    status, values = scripts.decode(scripts.run(client, scripts.DS_APPEND, _keys(name), args))
    return Appended(status, [str(v) for v in values], len(messages))


def delete(client: redis.Redis, name: str) -> None:
    """``DELETE``: the stream goes, or, while forks of it live, is marked deleted (its data goes, its record stays
    as the forks' source: each fork holds a copy of what it inherited). A fork that goes releases its source, and a
    deleted source released by its last fork goes too, up the chain. Each step is its own round trip (a fork and its
    source are in different slots of a cluster): a crash between two leaves a record that expires with its stream."""
    current: Info | None = info(client, name)
    while current is not None:
        if current.forks > 0 and not current.deleted:
            meta, out, producers = _keys(current.name)
            client.hset(meta, "deleted", "1")
            client.delete(out, producers)
            return
        client.delete(*_keys(current.name))
        if not current.forked_from:
            return
        source_meta = keys.durable_stream(current.forked_from, "meta")
        if not client.exists(source_meta):
            return
        left = int(client.hincrby(source_meta, "forks", -1))
        source = info(client, current.forked_from)
        current = source if source is not None and source.deleted and left <= 0 else None


class BadFork(ValueError):
    """A fork the source cannot give: ``status`` (400, 404 or 409) and why."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def inherited(client: redis.Redis, source: Info, at_id: str, sub: int) -> list[tuple[str, str, str]]:
    """The entries a fork of ``source`` at ``at_id`` (and ``sub`` messages or bytes of the next append) copies, with
    their ids: at most ``MAX_FORK_ENTRIES``. Raises ``BadFork``."""
    if at_id != START_ID and id_after(at_id, source.tail):
        raise BadFork(400, "Stream-Fork-Offset is past the source stream's tail.")
    out = keys.durable_stream(source.name, "out")
    entries: Any = client.xrange(out, "-", at_id, count=MAX_FORK_ENTRIES + 1) if at_id != START_ID else []
    copied = [(i, f.get("event", BYTES), f.get("data", "")) for i, f in entries if f.get("event") != CLOSED_MARKER]
    if len(copied) > MAX_FORK_ENTRIES:
        raise BadFork(400, f"A fork inherits at most {MAX_FORK_ENTRIES} messages.")
    if sub:
        copied += _partial(client, source, out, at_id, sub)
    return copied


# A fork copies what it inherits (copy-on-fork, so that it reads and lives on its own, in any slot of a cluster).
MAX_FORK_ENTRIES = 10_000


def _partial(client: redis.Redis, source: Info, out: str, at_id: str, sub: int) -> list[tuple[str, str, str]]:
    """The first ``sub`` messages (JSON) or bytes of the append after ``at_id``: what is read is what is needed."""
    start = "-" if at_id == START_ID else f"({at_id}"
    wanted = min(sub, MAX_FORK_ENTRIES) if source.json else 1
    batch: Any = client.xrange(out, start, "+", count=wanted)
    following = [(i, f.get("event", BYTES), f.get("data", "")) for i, f in batch if f.get("event") != CLOSED_MARKER]
    if not following:
        raise BadFork(400, "Stream-Fork-Sub-Offset goes past the source stream's tail.")
    if source.json:
        # Past the append's messages: fewer than ``sub`` of them, or its last one before the ``sub``-th.
        if len(following) < sub or any(event == JSON_LAST for _, event, _ in following[:-1]):
            raise BadFork(400, "Stream-Fork-Sub-Offset is past the messages of the next append.")
        return [*following[:-1], (following[-1][0], JSON_LAST, following[-1][2])]
    entry_id, event, data = following[0]
    content = payload(event, data)
    if sub > len(content):
        raise BadFork(400, "Stream-Fork-Sub-Offset is past the bytes of the next append.")
    return [(entry_id, BYTES, base64.b64encode(content[:sub]).decode())]


def touch(client: redis.Redis, name: str, ttl: str) -> None:
    """A read renews a stream's sliding TTL."""
    if ttl and ttl != "0":
        with client.pipeline(transaction=False) as pipe:
            for key in _keys(name):
                pipe.pexpire(key, int(ttl) * 1000)
            pipe.execute()


def read(client: redis.Redis, name: str, after_id: str, count: int) -> list[tuple[str, str, str]]:
    """Up to ``count`` entries after ``after_id``: (id, event, data), the closing marker included."""
    start = "-" if after_id == START_ID else f"({after_id}"
    entries: Any = client.xrange(keys.durable_stream(name, "out"), start, "+", count=count)
    return [(entry_id, fields.get("event", BYTES), fields.get("data", "")) for entry_id, fields in entries]

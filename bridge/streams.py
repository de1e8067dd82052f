"""Stream operations on one generation. Every function takes the Redis client it works with."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import orjson
import redis
from redis.typing import EncodableT, FieldT

from bridge import keys, scripts, tracing
from bridge.cluster import MOVING, node_client, refresh_if_moved
from bridge.connections import is_cluster
from bridge.events import ClientEvent, EventType, decode_out

# What ``abort`` and ``cancel`` return (ABORT's reply): ``REQUESTED`` when the live attempt was asked.


def ensure_group(client: redis.Redis, stream: str, group: str) -> None:
    """Create ``group`` on ``stream`` (and the stream) unless it exists."""
    try:
        client.xgroup_create(stream, group, id="0", mkstream=True)
    except redis.ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


class Submission(StrEnum):
    """What ``submit`` did: created the generation, or the check that refused it (nothing written then)."""

    CREATED = "created"
    CIRCUIT_OPEN = "circuit_open"
    SESSION_TAKEN = "session_taken"
    TOO_MANY_RUNNING = "too_many_running"
    USER_TOO_MANY_RUNNING = "user_too_many_running"


@dataclass(frozen=True, slots=True)
class NewGeneration:
    """A generation to store: what ``submit`` and ``create_generation`` write."""

    generation_id: str
    session_id: str
    model: str
    request: dict[str, Any]
    api_key: str = ""
    owner: str = ""
    # The key's token budget (per minute, per day) that the consumers enforce; 0: none.
    budget: tuple[int, int] = (0, 0)
    created_at: float = field(default_factory=time.time)
    # The end user as recorded (``generation.recorded_user``; '': none) and its token budget of the key.
    user: str = ""
    user_budget: tuple[int, int] = (0, 0)
    # The W3C traceparent of the request that made it ('': not traced; see bridge.tracing).
    trace: str = ""

    def meta(self) -> dict[FieldT, EncodableT]:
        """The ``:meta`` fields (the request has a key of its own: ``keys.gen_request``)."""
        meta: dict[FieldT, EncodableT] = {
            "model": self.model,
            "session_id": self.session_id,
            "status": "queued",
            "created_at": repr(self.created_at),
            "attempt": 0,
            "api_key": self.api_key,
            "owner": self.owner or self.api_key,
            "budget": f"{self.budget[0]},{self.budget[1]}",
        }
        if self.user:
            meta["user"] = self.user
            if any(self.user_budget):
                meta["user_budget"] = f"{self.user_budget[0]},{self.user_budget[1]}"
        if self.trace:
            meta[tracing.META_FIELD] = self.trace
        return meta


@dataclass(frozen=True, slots=True)
class RunningCap:
    """A cap on generations that have not ended, of an API key or of an end user of one: its sorted set, the cap,
    and when a slot lapses."""

    key: str
    limit: int
    expire_ms: int


def submit(
    client: redis.Redis,
    new: NewGeneration,
    *,
    group: str,
    retention_ms: int,
    session_ttl_ms: int,
    check_circuit: bool,
    running: RunningCap | None,
    user_running: RunningCap | None = None,
    work_shards: int = 1,
    claim_session: bool = True,
    task: tuple[str, bytes] | None = None,
) -> Submission:
    """Check and store a new generation in one round trip (``scripts.SUBMIT``): the model's circuit (when
    ``check_circuit``), the session's owner (claimed for a new session, renewed for the owner's own), the key's
    running cap and its end user's, then everything ``create_generation`` writes, and ``task`` (a broker queue's
    key and a message, from ``task_queue.prepared_generation_task``) pushed when given. A single Redis only: a
    cluster holds these keys in several slots, so its caller checks each step on its own and calls
    ``create_generation``."""
    gid, sid = new.generation_id, new.session_id
    script_keys = [
        keys.gen_meta(gid),
        keys.gen_raw(gid),
        keys.work_stream_for(gid, work_shards),
        keys.session_generations(sid),
        keys.session_owner(sid),
        keys.model_circuit(new.model),
        running.key if running is not None else keys.gen_lease(gid),
        keys.gen_request(gid),
        user_running.key if user_running is not None else keys.gen_lease(gid),
        task[0] if task is not None else keys.gen_lease(gid),
    ]
    owner = (new.owner or new.api_key) if claim_session else ""
    args: list[Any] = [group, session_ttl_ms, retention_ms * 2, owner, gid]
    args += [int(time.time() * 1000), int(check_circuit)]
    expire_ms = max((cap.expire_ms for cap in (running, user_running) if cap is not None), default=0)
    args += [running.limit if running is not None else 0, expire_ms]
    args += [orjson.dumps(new.request), user_running.limit if user_running is not None else 0]
    args.append(task[1] if task is not None else "")
    for item in new.meta().items():
        args.extend(item)
    reply = scripts.run(client, scripts.SUBMIT, script_keys, args)
    return Submission(reply[0])


def create_generation(
    client: redis.Redis,
    *,
    generation_id: str,
    session_id: str,
    model: str,
    request: dict[str, Any],
    group: str,
    retention_ms: int,
    created_at: float | None = None,
    api_key: str = "",
    owner: str = "",
    work_shards: int = 1,
    budget: tuple[int, int] = (0, 0),
    user: str = "",
    user_budget: tuple[int, int] = (0, 0),
    trace: str = "",
) -> float:
    """Store a new generation, open its raw stream to the processors and hand it to the consumer workers.

    The caller has claimed the session for ``owner`` first (``claim_session``), and the running slots.
    """
    new = NewGeneration(generation_id, session_id, model, request, api_key, owner, budget, user=user)
    new = dataclasses.replace(new, created_at=created_at or new.created_at, user_budget=user_budget, trace=trace)
    if not is_cluster(client):
        result = submit(
            client,
            new,
            group=group,
            retention_ms=retention_ms,
            session_ttl_ms=0,
            claim_session=False,  # the caller did
            check_circuit=False,
            running=None,
            work_shards=work_shards,
        )
        if result is not Submission.CREATED:
            raise ValueError(f"generation {generation_id} not created: {result.value}")
        return new.created_at
    # On a cluster the work shard and the session are other slots than the generation: no shared transaction.
    # The generation is stored first (a consumer that reads the work entry must find it, with its place in the
    # session) and removed again when the rest fails, so that the caller's error leaves nothing behind.
    work = keys.work_stream_for(generation_id, work_shards)
    pipe = client.pipeline(transaction=True)
    pipe.hset(keys.gen_meta(generation_id), mapping=new.meta())
    pipe.set(keys.gen_request(generation_id), orjson.dumps(new.request))
    pipe.xgroup_create(keys.gen_raw(generation_id), group, id="0", mkstream=True)
    pipe.execute()
    try:
        session = client.pipeline(transaction=True)  # one slot: the place in the session is the length after it
        session.rpush(keys.session_generations(session_id), generation_id)
        session.pexpire(keys.session_generations(session_id), retention_ms * 2)
        place = int(session.execute()[0]) - 1
        client.hset(keys.gen_meta(generation_id), "session_n", place)
        _hand_over(client, work, generation_id)
    except (redis.RedisError, redis.exceptions.RedisClusterException):
        client.delete(*keys.generation_keys(generation_id))
        raise
    return new.created_at


def _hand_over(client: redis.Redis, work: str, generation_id: str) -> None:
    """Cluster: the work entry and its hint, in one round trip to the shard's node (once more if it moved)."""
    for attempt in (1, 2):
        node = node_client(client, work).pipeline(transaction=False)
        node.xadd(work, {"generation_id": generation_id})
        node.publish(work, "")
        try:
            node.execute()
            return
        except MOVING as exc:
            refresh_if_moved(client, [exc])
            if attempt == 2:
                raise


def work_backlog(client: redis.Redis, group: str, shards: int) -> tuple[int, int | None, float]:
    """Generations of the work stream (every shard): pending (running), lag (waiting), oldest pending age in s.

    Lag is None when the server cannot tell (it reports none after entries were deleted).
    """
    streams = keys.work_streams(shards)
    pipe = client.pipeline(transaction=False)
    for stream in streams:
        pipe.xinfo_groups(stream)
    pending = 0
    lag: int | None = 0
    busy = []
    for stream, groups in zip(streams, pipe.execute(raise_on_error=False), strict=True):
        if isinstance(groups, redis.ResponseError):
            continue  # no such stream yet
        if isinstance(groups, Exception):
            raise groups
        for info in groups:
            if info.get("name") != group:
                continue
            pending += int(info.get("pending") or 0)
            shard_lag = info.get("lag")
            lag = None if lag is None or shard_lag is None else lag + int(shard_lag)
            if info.get("pending"):
                busy.append(stream)
    pipe = client.pipeline(transaction=False)
    for stream in busy:
        pipe.xpending_range(stream, group, min="-", max="+", count=1)
    firsts = [int(first[0]["message_id"].split("-")[0]) for first in pipe.execute() if first] if busy else []
    oldest_ms = min(firsts, default=None)
    oldest_s = max(0.0, time.time() - oldest_ms / 1000) if oldest_ms is not None else 0.0
    return pending, lag, oldest_s


def load_text(client: redis.Redis, generation_id: str) -> str:
    """The generation's text so far (since its last restart).

    Generations committed before ``:text`` existed kept their text in ``:meta``: read there when ``:text`` is
    missing (both keys share the generation's slot, one round trip).
    """
    pipe = client.pipeline(transaction=False)
    pipe.get(keys.gen_text(generation_id))
    pipe.hget(keys.gen_meta(generation_id), "text")
    text, earlier = pipe.execute()
    return str(text if text is not None else earlier or "")


def claim_session(client: redis.Redis, session_id: str, owner: str, ttl_ms: int) -> bool:
    """Make ``owner`` the owner of a new session, or tell whether it owns the existing one.

    ``ttl_ms`` must outlive the session's streams (they expire twice the retention after its last generation
    ends): each new generation renews it.
    """
    key = keys.session_owner(session_id)
    for _ in range(2):
        if client.set(key, owner, nx=True, px=ttl_ms):
            return True
        current = client.get(key)
        if current is not None:
            if current != owner:
                return False
            client.pexpire(key, ttl_ms)
            return True
    return False


def session_owner(client: redis.Redis, session_id: str) -> str | None:
    """Who owns a session, or None when there is no such session.

    A session started before owners were recorded is owned by the owner of its first generation.
    """
    pipe = client.pipeline(transaction=False)
    pipe.get(keys.session_owner(session_id))
    pipe.xrange(keys.session_index(session_id), count=1)
    pipe.lrange(keys.session_generations(session_id), 0, 0)
    owner, first_before, first = pipe.execute()
    first_id = first_before[0][1].get("generation_id", "") if first_before else (first[0] if first else None)
    if first_id is None:
        return None
    if owner is not None:
        return str(owner)
    meta = load_meta(client, first_id)
    return meta.get("owner") or meta.get("api_key") or ""


def session_generation_ids(client: redis.Redis, session_id: str, limit: int) -> list[str]:
    """The ids of a session's generations, newest first (at most ``limit``): its list, then the stream of those
    started before the list existed."""
    pipe = client.pipeline(transaction=False)
    pipe.lrange(keys.session_generations(session_id), -limit, -1)
    pipe.xrevrange(keys.session_index(session_id), count=limit)
    newest, before = pipe.execute()
    ids = [str(gid) for gid in reversed(newest)]
    ids += [fields["generation_id"] for _, fields in before if fields.get("generation_id")]
    return ids[:limit]


def load_meta(client: redis.Redis, generation_id: str) -> dict[str, str]:
    result: dict[str, str] = client.hgetall(keys.gen_meta(generation_id))  # type: ignore[assignment]
    return result


def abort(
    client: redis.Redis,
    generation_id: str,
    event_type: str,
    data: dict[str, Any],
    *,
    max_length: int,
    cancel_ttl_ms: int = 3_600_000,
) -> scripts.Status:
    """End a generation no live attempt holds, or ask the live attempt to cancel (``scripts.abort``'s status)."""
    return scripts.abort(
        client, generation_id, event_type, orjson.dumps(data), max_length=max_length, cancel_ttl_ms=cancel_ttl_ms
    )


def cancel(client: redis.Redis, generation_id: str, *, max_length: int) -> scripts.Status:
    """Request cancellation: written at once when no attempt runs, otherwise signalled to the running attempt."""
    return abort(client, generation_id, EventType.CANCELLED.value, {}, max_length=max_length)


def read_events(
    client: redis.Redis, stream: str, after_id: str, count: int, *, until_id: str | None = None
) -> list[ClientEvent]:
    """Events of a client stream strictly after ``after_id`` (``0`` for all) up to ``until_id``, oldest first."""
    start = "-" if after_id in ("0", "0-0") else f"({after_id}"
    entries: Any = client.xrange(stream, min=start, max=until_id or "+", count=count)
    return [decode_out(entry_id, fields) for entry_id, fields in entries]


def last_event(client: redis.Redis, stream: str) -> ClientEvent | None:
    entries: Any = client.xrevrange(stream, max="+", min="-", count=1)
    if not entries:
        return None
    entry_id, fields = entries[0]
    return decode_out(entry_id, fields)


def parse_stream_id(value: str) -> tuple[int, int] | None:
    """``(ms, seq)`` of a stream id such as ``1700000000000-3``; None when it is not one."""
    ms, _, seq = value.partition("-")
    if not ms.isdigit() or (seq and not seq.isdigit()) or len(ms) > 20 or len(seq) > 20:
        return None
    return int(ms), int(seq or 0)


def id_after(a: str, b: str) -> bool:
    """True when stream id ``a`` comes strictly after ``b``."""
    pa, pb = parse_stream_id(a), parse_stream_id(b)
    assert pa is not None and pb is not None
    return pa > pb


def previous_id(entry_id: str) -> str:
    """The greatest stream id smaller than ``entry_id``."""
    parsed = parse_stream_id(entry_id)
    assert parsed is not None
    ms, seq = parsed
    return f"{ms}-{seq - 1}" if seq > 0 else f"{ms - 1}-{2**64 - 1}"

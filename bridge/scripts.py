"""Lua scripts that make producer writes atomic and fenced, and how they are run.

The scripts are the files of ``bridge/lua/``, one per script, each headed by its KEYS, ARGV and replies. Every
script touches only the keys of one generation (one hash slot). A write is accepted only from the
attempt that ``:meta`` names as current, and never after a terminal entry: that is the fence that keeps a
redelivered or stale task from interleaving with the live one.

Every script that appends to a stream also sends a hint naming the stream: readers wait for hints instead of
blocking on every key they watch (``bridge.cluster``), so that a read costs what it brings back, not what it
watches. The scripts are written with ``HINT(key)`` where a hint goes, and each runs as the Lua for its Redis
(``variant``): on a cluster, a message on the key's own channel, from the node that holds it; on a single
Redis, the key as the payload of one shared channel per kind of stream (``keys.RAW_HINTS``, ``keys.OUT_HINTS``).
The writes of every token (``WRITE``, ``COMMIT``) say ``HINT_BATCHED(key)``: on a single Redis their hints are
sent by ``run_batch``, one message per flush naming every stream it wrote (``Call.hints``), instead of one per
generation.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from functools import cache
from pathlib import Path
from typing import Any

import redis
import redis.client
from redis.cluster import ClusterPipeline, RedisCluster
from redis.exceptions import NoScriptError

from bridge import keys as key_names
from bridge.cluster import MOVING, refresh_if_moved

_LUA = Path(__file__).parent / "lua"


# A line that stands for a file of ``bridge/lua/lib/`` (Lua shared by several scripts, e.g. comparing stream ids).
_INCLUDE = re.compile(r"^-- include (lib/\w+\.lua)$", re.MULTILINE)


def _lua(name: str) -> str:
    """The source of ``bridge/lua/<name>.lua`` (its header says its KEYS, ARGV and replies), each ``-- include``
    line replaced by the file it names."""
    source = (_LUA / f"{name}.lua").read_text()
    return _INCLUDE.sub(lambda match: (_LUA / match[1]).read_text().rstrip("\n"), source)


CLAIM_ATTEMPT = _lua("claim_attempt")
WRITE = _lua("write")
FAIL = _lua("fail")
SUPERVISE = _lua("supervise")
MARK_SENT = _lua("mark_sent")
UNMARK_REQUEUE = _lua("unmark_requeue")
ABORT = _lua("abort")
EXTERNAL_APPEND = _lua("external_append")
EXTERNAL_DS_APPEND = _lua("external_ds_append")
COMMIT = _lua("commit")
SUBMIT = _lua("submit")
TAKE_SLOT = _lua("take_slot")
RELEASE = _lua("release")
SESSION_APPEND = _lua("session_append")
CIRCUIT_RECORD = _lua("circuit_record")
DS_CREATE = _lua("ds_create")
DS_APPEND = _lua("ds_append")


_HINT = re.compile(r"HINT(_BATCHED)?\(([^()]*)\)")


@cache
def variant(source: str, cluster: bool) -> str:
    """The Lua that runs for a script written with ``HINT``/``HINT_BATCHED`` markers (see the module's docstring)."""

    def hint(match: re.Match[str]) -> str:
        batched, key = match.group(1), match.group(2)
        if cluster:
            return f"redis.call('PUBLISH', {key}, '')"
        if batched:
            return ""  # sent by run_batch for the whole flush
        channel = f"(string.sub({key}, -4) == ':out') and '{key_names.OUT_HINTS}' or '{key_names.RAW_HINTS}'"
        return f"redis.call('PUBLISH', {channel}, {key})"

    return _HINT.sub(hint, source)


def hint_channel(key: str) -> str:
    """The shared channel (single Redis) of a stream's hints."""
    return key_names.OUT_HINTS if key.endswith(":out") else key_names.RAW_HINTS


@cache
def sha(source: str) -> str:
    """The SHA1 that ``EVALSHA`` knows ``source`` by."""
    return hashlib.sha1(source.encode()).hexdigest()


@dataclass(slots=True)
class Call:
    """One run of a script, for ``run_batch``; ``hints``: the streams its ``HINT_BATCHED`` markers name."""

    source: str
    keys: list[str]
    args: list[Any]
    hints: tuple[str, ...] = ()


def run(client: redis.Redis, source: str, keys: list[str], args: list[Any], hints: tuple[str, ...] = ()) -> Any:
    """Run a script by its SHA, loading it on first use (per server).

    A pipeline cannot load a missing script between its commands: it sends the source with EVAL. Many calls
    go in one round trip with ``run_batch``.
    """
    if isinstance(client, ClusterPipeline | redis.client.Pipeline):
        cluster = isinstance(client, ClusterPipeline)
        return client.execute_command("EVAL", variant(source, cluster), len(keys), *keys, *args)  # type: ignore[no-untyped-call]
    if isinstance(client, RedisCluster):
        # The cluster client routes by key and follows MOVED and ASK by itself.
        lua = variant(source, True)
        try:
            return client.evalsha(sha(lua), len(keys), *keys, *args)
        except NoScriptError:
            client.script_load(lua)
            return client.evalsha(sha(lua), len(keys), *keys, *args)
    return run_batch(client, [Call(source, keys, args, hints)], raise_on_error=True)[0]


def run_batch(client: redis.Redis, calls: list[Call], *, raise_on_error: bool = False) -> list[Any]:
    """Run many scripts in one round trip per node (the node of each call's first key); results in order.

    A call the server answered with an error has that error as its result (raised instead with
    ``raise_on_error``); a connection error raises. A script the server did not know yet is loaded and its
    calls sent again (a script that is not there did not run). On a cluster, a call whose slot moved away
    is sent again through the cluster client, which follows the move. On a single Redis, the hints of every
    call (``Call.hints``) follow in the same round trip: one message per channel.
    """
    results: list[Any] = [None] * len(calls)
    cluster = isinstance(client, RedisCluster)
    for node, indexes in _by_node(client, calls):
        node_calls = [calls[i] for i in indexes]
        replies = _send(node, node_calls, cluster)
        missing = [n for n, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
        if missing:
            for source in {variant(calls[indexes[n]].source, cluster) for n in missing}:
                node.script_load(source)
            again = _send(node, [calls[indexes[n]] for n in missing], cluster)
            for n, reply in zip(missing, again, strict=True):
                replies[n] = reply
        if cluster and refresh_if_moved(client, replies):
            for n, reply in enumerate(replies):
                if isinstance(reply, MOVING):
                    call = calls[indexes[n]]
                    try:
                        replies[n] = run(client, call.source, call.keys, call.args)
                    except redis.ResponseError as exc:
                        replies[n] = exc
        for i, reply in zip(indexes, replies, strict=True):
            if raise_on_error and isinstance(reply, Exception):
                raise reply
            results[i] = reply
    return results


def _send(node: redis.Redis, calls: list[Call], cluster: bool) -> list[Any]:
    pipe = node.pipeline(transaction=False)
    hints: dict[str, list[str]] = {}
    for call in calls:
        lua = variant(call.source, cluster)
        pipe.execute_command("EVALSHA", sha(lua), len(call.keys), *call.keys, *call.args)  # type: ignore[no-untyped-call]
        if not cluster:
            for key in call.hints:
                hints.setdefault(hint_channel(key), []).append(key)
    for channel, names in hints.items():
        pipe.publish(channel, " ".join(names))
    replies: list[Any] = pipe.execute(raise_on_error=False)
    return replies[: len(calls)]


def _by_node(client: redis.Redis, calls: list[Call]) -> list[tuple[redis.Redis, list[int]]]:
    if not isinstance(client, RedisCluster):
        return [(client, list(range(len(calls))))]
    groups: dict[str, list[int]] = {}
    for i, call in enumerate(calls):
        groups.setdefault(client.get_node_from_key(call.keys[0]).name, []).append(i)
    return [(client.get_redis_connection(client.get_node(node_name=name)), group) for name, group in groups.items()]


# -- replies: every script answers a status word, alone or first in a table with its values -----------------


class Status(StrEnum):
    """The status words the scripts reply with: one table for all of them, and a word means the same in each."""

    # The generation a script was asked about.
    UNKNOWN = "unknown"  # no such generation
    FINISHED = "finished"  # it has ended already
    HELD = "held"  # a live attempt holds it
    NOT_EXTERNAL = "not_external"  # it is not fed by an external producer
    # Claims, writes and ends.
    CLAIMED = "claimed"  # a new attempt started (its number follows)
    CHECK_FIRST = "check_first"  # its model is checked before a claim: nothing claimed
    WRITTEN = "written"  # the entries (or the terminal entry) were written
    FENCED = "fenced"  # the attempt is not the current one (or holds no lease) any more
    CANCELLED = "cancelled"  # a cancel was waiting: the attempt wrote the generation's end instead
    REPEATED = "repeated"  # this batch was written before (a retry after a lost reply)
    GAP = "gap"  # an earlier batch, or earlier tokens, are missing
    CANCEL_REQUESTED = "cancel_requested"  # the live attempt is asked to cancel
    RELEASED = "released"  # the attempt's lease was let go
    # Commits and appends (the number written follows; an append, the next index expected).
    COMMITTED = "committed"
    REFUSED = "refused"  # a commit processed from a state that is not the last commit's: nothing written
    APPENDED = "appended"
    DUPLICATE = "duplicate"  # every token was accepted before
    RECORDED = "recorded"  # a circuit's outcome (the failures in a row follow)
    # A model's concurrency slot.
    TAKEN = "taken"
    FULL = "full"
    # What supervision should do about a generation whose attempt may be dead.
    NOTHING = "nothing"
    REQUEUE = "requeue"  # enqueue a new attempt (marked)
    EXHAUSTED = "exhausted"  # no attempt left: it ends with worker_lost
    QUEUE_TIMEOUT = "queue_timeout"  # not started in time
    PRODUCER_SILENT = "producer_silent"  # an external producer sent nothing for too long
    RESEND = "resend"  # send the waiting attempt's task again (marked)
    # A submission.
    CREATED = "created"
    CIRCUIT_OPEN = "circuit_open"
    SESSION_TAKEN = "session_taken"
    TOO_MANY_RUNNING = "too_many_running"
    USER_TOO_MANY_RUNNING = "user_too_many_running"
    OK = "ok"
    # A stream of the Durable Streams protocol (bridge.durable_store).
    EXISTS = "exists"  # the same configuration: nothing written
    CONFLICT = "conflict"  # another configuration, owner or content type
    CLOSED = "closed"  # it takes no more appends
    STALE_EPOCH = "stale_epoch"  # a producer's epoch older than the one known (fenced)
    BAD_EPOCH_SEQ = "bad_epoch_seq"  # a producer's new epoch that does not start at 0
    SEQ_CONFLICT = "seq_conflict"  # Stream-Seq not above the last one


def decode(reply: Any) -> tuple[Status, list[Any]]:
    """A script's reply: its status word and the values that follow it."""
    head, values = (reply[0], list(reply[1:])) if isinstance(reply, list) else (reply, [])
    return Status(head.decode() if isinstance(head, bytes) else head), values


def decode_status(reply: Any) -> Status:
    return decode(reply)[0]


def decode_count(reply: Any, expected: Status) -> int:
    """The number that follows ``expected`` in a reply (a commit's events written, a circuit's failures)."""
    status, values = decode(reply)
    if status is not expected:
        raise ValueError(f"expected {expected.value!r}, got {status.value!r}")
    return int(values[0])


def decode_commit(reply: Any) -> Status | None:
    """COMMIT's status (``COMMITTED`` or ``REFUSED``); None for an error a pipeline answered with (the caller
    checks it)."""
    if isinstance(reply, Exception):
        return None
    return decode_status(reply)


@dataclass(frozen=True, slots=True)
class Claimed:
    """CLAIM_ATTEMPT's answer: ``CLAIMED`` with the new attempt's number, or the refusal (``UNKNOWN``, ``FINISHED``,
    ``HELD``, ``CHECK_FIRST``: ``attempt`` 0); and the stored request, when there is one."""

    status: Status
    attempt: int = 0
    request: str | None = None


def claim_attempt(
    client: redis.Redis,
    generation_id: str,
    *,
    lease_ms: int,
    max_length: int,
    reason: str,
    check_first: Sequence[str] = (),
    worker: str = "",
) -> Claimed:
    """Start a new attempt, or say why not; with the stored request.

    A generation of a model in ``check_first`` is not claimed (``CHECK_FIRST``): its caller checks first.
    """
    generation_keys = [key_names.gen_meta(generation_id), key_names.gen_lease(generation_id)]
    generation_keys += [key_names.gen_raw(generation_id), key_names.gen_request(generation_id)]
    args = [lease_ms, repr(time.time()), max_length, reason, worker, *check_first]
    status, values = decode(run(client, CLAIM_ATTEMPT, generation_keys, args))
    if status is Status.CLAIMED:
        return Claimed(status, int(values[0]), values[1] or None)
    return Claimed(status, 0, (values[0] if values else None) or None)


def write_call(generation_id: str, args: list[Any]) -> Call:
    """A run of WRITE (ARGV as the script documents it), for ``run`` or ``run_batch`` (a write loop)."""
    generation_keys = [
        key_names.gen_meta(generation_id),
        key_names.gen_lease(generation_id),
        key_names.gen_raw(generation_id),
        key_names.gen_cancel(generation_id),
    ]
    # A heartbeat writes no entry (a cancel it finds is hinted by the script itself).
    hints = (generation_keys[2],) if len(args) > 5 else ()
    return Call(WRITE, generation_keys, args, hints)


def fail(client: redis.Redis, generation_id: str, event_type: str, data: bytes, *, max_length: int) -> Status:
    """Write a terminal entry whatever attempt holds the generation (the attempt is fenced off): ``WRITTEN``,
    ``FINISHED`` or ``UNKNOWN``."""
    generation_keys = [key_names.gen_meta(generation_id), key_names.gen_lease(generation_id)]
    generation_keys.append(key_names.gen_raw(generation_id))
    return decode_status(run(client, FAIL, generation_keys, [event_type, data, max_length]))


def abort(
    client: redis.Redis, generation_id: str, event_type: str, data: bytes, *, max_length: int, cancel_ttl_ms: int
) -> Status:
    """End a generation no live attempt holds (``WRITTEN``), or ask the live attempt to cancel (``event_type``
    cancelled: ``CANCEL_REQUESTED``); ``HELD`` when a live attempt holds it and ``event_type`` is another end,
    ``FINISHED`` or ``UNKNOWN``."""
    generation_keys = [
        key_names.gen_meta(generation_id),
        key_names.gen_lease(generation_id),
        key_names.gen_raw(generation_id),
        key_names.gen_cancel(generation_id),
    ]
    return decode_status(run(client, ABORT, generation_keys, [event_type, data, max_length, cancel_ttl_ms]))


def supervise(
    client: redis.Redis,
    generation_ids: Sequence[str],
    *,
    max_attempts: int,
    queue_timeout_ms: int,
    resend_ms: int = 0,
    max_resends: int = 0,
    lost_before_ms: int = 0,
) -> dict[str, Status]:
    """SUPERVISE for many generations in one round trip per node; a generation whose slot is moving is left out
    (supervised again at the next heartbeat, on its new node). ``resend_ms`` 0: a waiting task is never sent
    again. ``lost_before_ms``: a waiting task sent before then may have been taken by a worker that died since,
    and is sent again at once."""
    args = [int(time.time() * 1000), max_attempts, queue_timeout_ms, resend_ms, max_resends, lost_before_ms]
    calls = [Call(SUPERVISE, [key_names.gen_meta(gid), key_names.gen_lease(gid)], args) for gid in generation_ids]
    verdicts: dict[str, Status] = {}
    for gid, result in zip(generation_ids, run_batch(client, calls), strict=True):
        if isinstance(result, MOVING):
            continue
        if isinstance(result, Exception):
            raise result
        verdicts[gid] = decode_status(result)
    return verdicts


def mark_sent(client: redis.Redis, generation_id: str) -> None:
    """Note that the generation's task was just sent again (a deferral's retry): SUPERVISE need not re-send it."""
    run(client, MARK_SENT, [key_names.gen_meta(generation_id)], [int(time.time() * 1000)])


def unmark_requeue(client: redis.Redis, generation_id: str, attempt: str) -> None:
    """Undo SUPERVISE's requeue mark of ``attempt`` (its new attempt could not be enqueued)."""
    run(client, UNMARK_REQUEUE, [key_names.gen_meta(generation_id)], [attempt])


def external_append(
    client: redis.Redis, generation_id: str, index: int, tokens: list[str], *, max_length: int, idle_ms: int
) -> tuple[Status, int]:
    """Append an external producer's tokens from position ``index``: ``APPENDED``, ``DUPLICATE``, ``GAP``,
    ``FINISHED``, ``NOT_EXTERNAL`` or ``UNKNOWN``, and the next index expected."""
    generation_keys = [key_names.gen_meta(generation_id), key_names.gen_raw(generation_id)]
    generation_keys.append(key_names.gen_lease(generation_id))
    reply = run(client, EXTERNAL_APPEND, generation_keys, [index, max_length, idle_ms, repr(time.time()), *tokens])
    status, values = decode(reply)
    return status, int(values[0])


def take_slot(client: redis.Redis, running_key: str, generation_id: str, *, limit: int, expire_ms: int) -> Status:
    """A place for ``generation_id`` among at most ``limit`` in ``running_key`` (``TAKEN`` or ``FULL``), lapsing
    after ``expire_ms``."""
    args = [generation_id, int(time.time() * 1000), limit, expire_ms]
    return decode_status(run(client, TAKE_SLOT, [running_key], args))


def release_lease(client: redis.Redis, generation_id: str, attempt: int) -> bool:
    """Delete the generation's lease if ``attempt`` holds it; whether it did."""
    return decode_status(run(client, RELEASE, [key_names.gen_lease(generation_id)], [attempt])) is Status.RELEASED

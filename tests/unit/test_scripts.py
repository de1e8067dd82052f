"""The producer's Lua scripts as pure logic, on fakeredis: claims, the attempt fence, cancellation, model slots.

The same contract runs on a real Redis, with leases that really expire, in tests/integration/test_producer.py.
"""

from __future__ import annotations

import time

import fakeredis
import orjson

from bridge import keys, scripts
from bridge.producer import GenerationWriter, Outcome
from bridge.scripts import Status


def _new(client: fakeredis.FakeRedis, gid: str = "gen_a") -> str:
    client.hset(keys.gen_meta(gid), mapping={"status": "queued", "attempt": 0})
    return gid


def _writer(client: fakeredis.FakeRedis, gid: str = "gen_a") -> GenerationWriter:
    return GenerationWriter(client, gid, lease_ms=10_000, max_length=1000, retry_s=0)


def _raw(client: fakeredis.FakeRedis, gid: str = "gen_a") -> list[tuple[str, str, str]]:
    return [(f["type"], f["attempt"], f["data"]) for _, f in client.xrange(keys.gen_raw(gid))]


def _token(text: str) -> tuple[str, dict[str, str]]:
    return ("token", {"content": text})


def test_one_attempt_at_a_time_and_none_for_an_unknown_generation(fake_redis: fakeredis.FakeRedis) -> None:
    assert _writer(fake_redis, "gen_missing").claim() is Status.UNKNOWN
    gid = _new(fake_redis)
    first = _writer(fake_redis, gid)
    assert first.claim() is Status.CLAIMED and first.attempt == 1
    assert fake_redis.hget(keys.gen_meta(gid), "status") == "running"
    # A redelivered task finds the lease of the live attempt: refused, nothing written
    assert _writer(fake_redis, gid).claim() is Status.HELD
    assert fake_redis.hget(keys.gen_meta(gid), "attempt") == "1" and _raw(fake_redis) == []


def test_a_new_attempt_fences_the_old_one_and_tells_readers_to_restart(fake_redis: fakeredis.FakeRedis) -> None:
    # Given attempt 1 wrote a token, then lost its lease (its worker died)
    gid = _new(fake_redis)
    old = _writer(fake_redis, gid)
    old.claim()
    assert old.write([_token("a")]) == Outcome.WRITTEN
    fake_redis.delete(keys.gen_lease(gid))
    # When attempt 2 starts
    new = _writer(fake_redis, gid)
    assert new.claim(reason="worker_lost") is Status.CLAIMED and new.attempt == 2
    # Then the old attempt can write nothing more, and the stream says where attempt 2 begins
    assert old.write([_token("stale")]) == Outcome.FENCED
    assert new.write([_token("b")]) == Outcome.WRITTEN
    assert [(t, a) for t, a, _ in _raw(fake_redis)] == [("token", "1"), ("restart", "2"), ("token", "2")]
    assert orjson.loads(_raw(fake_redis)[1][2]) == {"reason": "worker_lost"}


def test_a_write_retried_after_a_lost_reply_is_applied_once(fake_redis: fakeredis.FakeRedis) -> None:
    gid = _new(fake_redis)
    writer = _writer(fake_redis, gid)
    writer.claim()
    writer.write([_token("a"), _token("b")])
    writer.batch -= 1  # the same batch sent again, as after a reply lost on the wire
    assert writer.write([_token("a"), _token("b")]) == Outcome.WRITTEN
    assert len(_raw(fake_redis)) == 2


def test_the_terminal_entry_ends_the_generation_for_every_attempt(fake_redis: fakeredis.FakeRedis) -> None:
    gid = _new(fake_redis)
    writer = _writer(fake_redis, gid)
    writer.claim()
    writer.write([_token("a"), ("done", {"finish_reason": "stop"})])
    assert fake_redis.hget(keys.gen_meta(gid), "terminal") == "done"
    assert not fake_redis.exists(keys.gen_lease(gid))
    assert writer.write([_token("late")]) == Outcome.FENCED
    assert _writer(fake_redis, gid).claim() is Status.FINISHED
    assert [t for t, _, _ in _raw(fake_redis)] == ["token", "done"]


def test_a_cancel_request_ends_the_attempt_at_its_next_write(fake_redis: fakeredis.FakeRedis) -> None:
    gid = _new(fake_redis)
    writer = _writer(fake_redis, gid)
    writer.claim()
    writer.write([_token("a")])
    fake_redis.set(keys.gen_cancel(gid), 1)
    assert writer.heartbeat() == Outcome.CANCELLED
    assert [t for t, _, _ in _raw(fake_redis)] == ["token", "cancelled"]
    assert fake_redis.hget(keys.gen_meta(gid), "terminal") == "cancelled"
    assert writer.write([_token("b")]) == Outcome.FENCED


def test_a_released_lease_lets_a_new_attempt_start_at_once(fake_redis: fakeredis.FakeRedis) -> None:
    gid = _new(fake_redis)
    first, second = _writer(fake_redis, gid), _writer(fake_redis, gid)
    first.claim()
    # Only the attempt that holds the lease can release it
    assert not scripts.release_lease(fake_redis, gid, 2)
    assert second.claim() is Status.HELD
    first.release()
    assert second.claim() is Status.CLAIMED and second.attempt == 2


def _take(client: fakeredis.FakeRedis, gid: str, *, now_ms: int, limit: int = 2, expire_ms: int = 60_000) -> int:
    """1 when the place is taken, 0 when the model is full."""
    reply = scripts.run(client, scripts.TAKE_SLOT, ["slots"], [gid, now_ms, limit, expire_ms])
    return {Status.TAKEN: 1, Status.FULL: 0}[scripts.decode_status(reply)]


def test_a_model_runs_at_most_its_concurrency(fake_redis: fakeredis.FakeRedis) -> None:
    now_ms = int(time.time() * 1000)
    assert [_take(fake_redis, g, now_ms=now_ms) for g in ("gen_a", "gen_b", "gen_c")] == [1, 1, 0]
    # A generation that already holds a place keeps it (a retried task), and a freed place is taken again
    assert _take(fake_redis, "gen_a", now_ms=now_ms) == 1
    fake_redis.zrem("slots", "gen_b")
    assert _take(fake_redis, "gen_c", now_ms=now_ms) == 1


def test_the_place_of_a_worker_that_died_frees_itself(fake_redis: fakeredis.FakeRedis) -> None:
    now_ms = int(time.time() * 1000)
    _take(fake_redis, "gen_a", now_ms=now_ms, limit=1, expire_ms=1000)
    assert _take(fake_redis, "gen_b", now_ms=now_ms + 999, limit=1) == 0
    assert _take(fake_redis, "gen_b", now_ms=now_ms + 1001, limit=1) == 1
    assert fake_redis.zrange("slots", 0, -1) == ["gen_b"]


def test_every_lua_file_is_a_script_with_its_keys_in_its_header() -> None:
    from pathlib import Path

    from bridge import scripts

    directory = Path(scripts.__file__).parent / "lua"
    for path in sorted(directory.glob("*.lua")):
        # Each file is the source of the constant named after it, what it includes from lib/ in its place
        source = getattr(scripts, path.stem.upper())
        statements = [line for line in path.read_text().splitlines() if not line.startswith("-- include ")]
        assert all(line in source.splitlines() for line in statements), path.name
        assert "-- include " not in source, path.name
        # And its header, the comment lines before its first statement, says which KEYS it takes
        lines = path.read_text().splitlines()
        header = lines[: next(i for i, line in enumerate(lines) if not line.startswith("--"))]
        assert any("KEYS" in line for line in header), path.name


def test_every_script_replies_with_a_status_word_of_the_one_table() -> None:
    import re
    from pathlib import Path

    directory = Path(scripts.__file__).parent / "lua"
    words = {status.value for status in Status}
    for path in sorted(directory.glob("*.lua")):
        source = path.read_text()
        # Given every reply of the script: a word alone, or first in a table with its values
        replies = re.findall(r"\breturn\s+(\{\s*)?'(\w+)'", source)
        assert replies, path.name
        # Then each word is one the table decodes, and no reply is a bare number (a code whose meaning depends on
        # the script)
        assert {word for _, word in replies} <= words, path.name
        assert not re.search(r"\breturn\s+\{?\s*-?\d", source), path.name
    # And the values that follow the word come with it
    assert scripts.decode(["claimed", 2, None]) == (Status.CLAIMED, [2, None])
    assert scripts.decode(b"full") == (Status.FULL, [])

"""Producer writes on a real Redis: claims, fencing by attempt, cancellation, terminal entries."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
import redis

from bridge import keys, scripts, streams
from bridge.producer import Chunk, Finish, GenerationWriter, Outcome, TokenSource
from bridge.scripts import Status
from bridge.settings import Settings
from bridge.write_loop import WriteLoop
from tests.support import new_generation


def _writer(r: redis.Redis, gid: str, lease_ms: int = 5000) -> GenerationWriter:
    return GenerationWriter(r, gid, lease_ms=lease_ms, max_length=1000)


def _raw_types(r: redis.Redis, gid: str) -> list[tuple[str, str]]:
    return [(f["type"], f["attempt"]) for _, f in r.xrange(keys.gen_raw(gid))]


def test_creating_a_generation_queues_it_for_the_processors(r: redis.Redis, settings: Settings) -> None:
    new_generation(r, settings, "gen_1")
    assert r.hget(keys.gen_meta("gen_1"), "status") == "queued"
    assert [g["name"] for g in r.xinfo_groups(keys.gen_raw("gen_1"))] == [settings.redis_consumer_group]
    assert [f["generation_id"] for _, f in r.xrange(keys.WORK_STREAM)] == ["gen_1"]
    assert r.lrange(keys.session_generations("s1"), 0, -1) == ["gen_1"]
    assert r.hget(keys.gen_meta("gen_1"), "session_n") == "0"


def test_a_second_attempt_is_refused_while_the_first_holds_its_lease(r: redis.Redis, settings: Settings) -> None:
    # Given a running first attempt
    new_generation(r, settings, "gen_1")
    first = _writer(r, "gen_1")
    assert first.claim() is Status.CLAIMED and first.attempt == 1
    assert r.hget(keys.gen_meta("gen_1"), "status") == "running"
    # When a redelivered task tries to start
    second = _writer(r, "gen_1")
    # Then it is refused and writes nothing
    assert second.claim() is Status.HELD
    assert first.write([("token", {"content": "a", "ts": 1.0})]) is Outcome.WRITTEN
    assert _raw_types(r, "gen_1") == [("token", "1")]


def test_a_new_attempt_after_the_lease_expired_fences_the_old_one(r: redis.Redis, settings: Settings) -> None:
    # Given an attempt whose worker stopped renewing its lease
    new_generation(r, settings, "gen_1")
    old = _writer(r, "gen_1", lease_ms=1000)
    old.claim()
    old.write([("token", {"content": "a", "ts": 1.0})])
    r.delete(keys.gen_lease("gen_1"))  # the lease ran out
    # When a new attempt starts
    new = _writer(r, "gen_1")
    assert new.claim(reason="worker_lost") is Status.CLAIMED and new.attempt == 2
    # Then readers are told to restart, and the old attempt can no longer write
    assert old.write([("token", {"content": "stale", "ts": 2.0})]) is Outcome.FENCED
    assert new.write([("token", {"content": "b", "ts": 3.0}), ("done", {"finish_reason": "stop"})]) is Outcome.WRITTEN
    assert _raw_types(r, "gen_1") == [("token", "1"), ("restart", "2"), ("token", "2"), ("done", "2")]


def test_nothing_is_written_after_the_terminal_entry(r: redis.Redis, settings: Settings) -> None:
    new_generation(r, settings, "gen_1")
    writer = _writer(r, "gen_1")
    writer.claim()
    writer.write([("done", {"finish_reason": "stop"})])
    assert writer.write([("token", {"content": "late", "ts": 1.0})]) is Outcome.FENCED
    assert _writer(r, "gen_1").claim() is Status.FINISHED
    assert r.exists(keys.gen_lease("gen_1")) == 0


def test_cancelling_a_queued_generation_ends_it_at_once(r: redis.Redis, settings: Settings) -> None:
    new_generation(r, settings, "gen_1")
    assert streams.cancel(r, "gen_1", max_length=1000) == Status.WRITTEN
    assert _raw_types(r, "gen_1") == [("cancelled", "0")]
    assert _writer(r, "gen_1").claim() is Status.FINISHED
    assert streams.cancel(r, "gen_1", max_length=1000) == Status.FINISHED
    assert streams.cancel(r, "gen_unknown", max_length=1000) == Status.UNKNOWN


def test_cancelling_a_running_generation_is_seen_by_its_next_write(r: redis.Redis, settings: Settings) -> None:
    new_generation(r, settings, "gen_1")
    writer = _writer(r, "gen_1")
    writer.claim()
    assert streams.cancel(r, "gen_1", max_length=1000) == Status.CANCEL_REQUESTED
    assert writer.heartbeat() is Outcome.CANCELLED
    assert _raw_types(r, "gen_1") == [("cancelled", "1")]
    assert writer.write([("token", {"content": "x", "ts": 1.0})]) is Outcome.FENCED


def _tokens(count: int, *, pace_s: float = 0.0) -> TokenSource:
    def source(stop: threading.Event) -> Iterator[Chunk]:
        for n in range(count):
            if pace_s and stop.wait(pace_s):
                return
            yield f"{n} "
        yield Finish()

    return source


def test_the_writes_of_many_generations_share_round_trips_and_stay_exact(r: redis.Redis, settings: Settings) -> None:
    # Given 40 generations of one worker process writing 25 tokens each at once, through one write loop
    loop = WriteLoop(r)
    gids = [new_generation(r, settings, f"gen_{i}") for i in range(40)]
    writers = [GenerationWriter(r, gid, lease_ms=5000, max_length=1000) for gid in gids]
    for writer in writers:
        assert writer.claim() is Status.CLAIMED and writer.attempt == 1
    outcomes: list[Outcome] = []
    threads = [
        threading.Thread(target=lambda w=w: outcomes.append(loop.run(w, _tokens(25, pace_s=0.002)))) for w in writers
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    # Then every generation's raw stream holds its own tokens in order, once, and its end
    assert outcomes == [Outcome.FINISHED] * 40
    for gid in gids:
        entries = [f for _, f in r.xrange(keys.gen_raw(gid))]
        assert [orjson.loads(f["data"]).get("content") for f in entries[:-1]] == [f"{n} " for n in range(25)]
        assert entries[-1]["type"] == "done"
    # And the 1,000 tokens took far fewer round trips
    assert loop.flushes < 40 * 26 / 2


def test_a_stale_attempt_stays_fenced_through_the_write_loop(r: redis.Redis, settings: Settings) -> None:
    # Given an attempt whose lease ran out and a second attempt that took over
    gid = new_generation(r, settings, "gen_1")
    loop = WriteLoop(r)
    stale = GenerationWriter(r, gid, lease_ms=5000, max_length=1000)
    assert stale.claim() is Status.CLAIMED and stale.attempt == 1
    r.delete(keys.gen_lease(gid))
    live = GenerationWriter(r, gid, lease_ms=5000, max_length=1000)
    assert live.claim() is Status.CLAIMED and live.attempt == 2
    # When both write through the same loop
    assert loop.run(stale, _tokens(1)) is Outcome.FENCED
    assert loop.run(live, _tokens(1)) is Outcome.FINISHED
    # Then only the live attempt's token is there
    assert [(t, a) for t, a in _raw_types(r, gid) if t == "token"] == [("token", "2")]


def test_the_lease_is_renewed_on_a_timer_not_by_every_write(r: redis.Redis, settings: Settings) -> None:
    # Given a writer with a 3 s lease that has just claimed
    gid = new_generation(r, settings, "gen_1")
    writer = _writer(r, gid, lease_ms=3000)
    assert writer.claim() is Status.CLAIMED and writer.attempt == 1
    r.pexpire(keys.gen_lease(gid), 100_000)  # a marker: a renewal sets the lease time back to 3 s
    # When it writes at once, then again after a third of the lease
    writer.write([("token", {"content": "a", "ts": 1.0})])
    assert int(r.pttl(keys.gen_lease(gid))) > 3000
    time.sleep(1.05)  # a fixed wait, the scenario: a third of the lease passes, so the renewal timer is due
    writer.write([("token", {"content": "b", "ts": 1.0})])
    # Then only the second write renewed it
    assert 0 < int(r.pttl(keys.gen_lease(gid))) <= 3000


def test_a_generation_waiting_on_a_write_loop_that_dies_fails_instead_of_hanging(
    r: redis.Redis, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a write loop whose thread is killed in the middle of a flush (the worker going away)
    class Killed(BaseException):
        pass

    def killed(*args: Any, **kwargs: Any) -> list[Any]:
        raise Killed()

    gid = new_generation(r, settings, "gen_1")
    loop = WriteLoop(r)
    writer = GenerationWriter(r, gid, lease_ms=5000, max_length=1000, retry_s=0)
    assert writer.claim() is Status.CLAIMED and writer.attempt == 1
    monkeypatch.setattr(loop, "_send", killed)
    # When a generation writes through it
    # Then it fails as a lost connection would, at once, and gives its lease back
    with pytest.raises(redis.ConnectionError, match="write loop stopped"):
        loop.run(writer, _tokens(3))
    assert not r.exists(keys.gen_lease(gid))
    # And the next generation, once Redis answers again, goes through a new loop thread
    monkeypatch.undo()
    assert writer.claim() is Status.CLAIMED and writer.attempt == 2
    assert loop.run(writer, _tokens(3)) is Outcome.FINISHED


def test_a_write_after_a_lost_one_restarts_the_attempt_instead_of_leaving_a_hole(
    r: redis.Redis, settings: Settings
) -> None:
    # Given an attempt that wrote two batches, the second acknowledged by a primary that then died: the
    # promoted replica has only the first
    new_generation(r, settings, "gen_1")
    writer = _writer(r, "gen_1")
    writer.claim()
    assert writer.write([("token", {"content": "a", "ts": 1.0})]) is Outcome.WRITTEN
    assert writer.write([("token", {"content": "b", "ts": 2.0})]) is Outcome.WRITTEN
    last = r.xrevrange(keys.gen_raw("gen_1"), count=1)[0][0]
    r.xdel(keys.gen_raw("gen_1"), last)
    r.hset(keys.gen_meta("gen_1"), "wseq", 1)
    # When the attempt writes its next batch
    result = writer.write([("token", {"content": "c", "ts": 3.0})])
    # Then nothing is written past the hole, and the lease is given up for a new attempt (which restarts)
    assert result is Outcome.LOST
    assert [f["data"] for _, f in r.xrange(keys.gen_raw("gen_1"))] == [
        orjson.dumps({"content": "a", "ts": 1.0}).decode()
    ]
    assert r.exists(keys.gen_lease("gen_1")) == 1  # released by the pump, not by the write
    assert _writer(r, "gen_1").claim() is Status.HELD


def test_a_write_refused_at_maxmemory_ends_the_generation_with_the_next_batch_number(
    r: redis.Redis, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given an attempt that wrote one batch, whose second write Redis refuses at maxmemory (nothing written)
    gid = new_generation(r, settings, "gen_1")
    writer = _writer(r, gid)
    writer.claim()
    assert writer.write([("token", {"content": "a", "ts": 1.0})]) is Outcome.WRITTEN
    real_run = scripts.run
    refusals = iter([redis.ResponseError("OOM command not allowed when used memory > 'maxmemory'.")])

    def full_once(*args: Any, **kwargs: Any) -> Any:
        refusal = next(refusals, None)
        if refusal is not None:
            raise refusal
        return real_run(*args, **kwargs)

    monkeypatch.setattr(scripts, "run", full_once)
    # When it writes its next token
    result = writer.write([("token", {"content": "b", "ts": 2.0})])
    # Then the generation ends with redis_out_of_memory in the refused write's place: no hole, nothing lost
    assert result is Outcome.OUT_OF_MEMORY
    types = [f["type"] for _, f in r.xrange(keys.gen_raw(gid))]
    assert types == ["token", "error"]
    assert orjson.loads(r.xrange(keys.gen_raw(gid))[-1][1]["data"])["code"] == "redis_out_of_memory"
    assert r.hget(keys.gen_meta(gid), "wseq") == "2"

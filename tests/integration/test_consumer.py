"""The consumer worker on a real Redis: processing, atomic commit, expiry, takeover of a dead worker's work."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import orjson
import pytest
import redis

from bridge import ends, keys, scripts, streams
from bridge.events import ClientEvent, Event, decode_out
from bridge.producer import GenerationWriter
from bridge.sessions import SessionResolver
from bridge.settings import Settings
from tests.support import new_generation, wait_for
from workers.consumer import ConsumerWorker
from workers.processors import GenerationState, PersistenceProcessor, Processor, default_processors


def _write_tokens(r: redis.Redis, gid: str, words: list[str], *, finish: bool = True) -> GenerationWriter:
    writer = GenerationWriter(r, gid, lease_ms=10_000, max_length=10_000)
    writer.claim()
    entries: list[tuple[str, dict[str, Any]]] = [("token", {"content": w, "ts": 1.0}) for w in words]
    if finish:
        entries.append(
            ("done", {"finish_reason": "stop", "usage": {"prompt_tokens": 1, "completion_tokens": len(words)}})
        )
    writer.write(entries)
    return writer


def _session(r: redis.Redis, session_id: str) -> list[ClientEvent]:
    """A session's events as a reader gets them."""
    key = keys.session_out(session_id)
    return SessionResolver(r).resolve(key, [decode_out(i, f) for i, f in r.xrange(key)])


def _out(r: redis.Redis, gid: str) -> list[tuple[str, str, dict[str, Any]]]:
    return [(i, f["event"], orjson.loads(f["data"])) for i, f in r.xrange(keys.gen_out(gid))]


def _worker(r: redis.Redis, settings: Settings, processors: list[Processor] | None = None, **kw: Any) -> ConsumerWorker:
    return ConsumerWorker(r, settings, processors if processors is not None else default_processors(r), **kw)


def _finished(r: redis.Redis, gid: str) -> Callable[[], bool]:
    return lambda: r.hget(keys.gen_meta(gid), "status") in ("completed", "failed", "cancelled")


def test_a_generation_flows_from_raw_to_out_with_the_same_ids_and_contiguous_seq(
    r: redis.Redis, settings: Settings
) -> None:
    # Given a generation whose producer wrote five tokens and done
    gid = new_generation(r, settings, "gen_1")
    words = ["one ", "two ", "three ", "four ", "five"]
    _write_tokens(r, gid, words)
    raw_ids = [i for i, _ in r.xrange(keys.gen_raw(gid))]
    # When a consumer runs
    worker = _worker(r, settings)
    wait_for(_finished(r, gid), step=lambda: worker.run_once(block_ms=50))
    # Then :out mirrors :raw id for id, with seq 0..n
    out = _out(r, gid)
    assert [i for i, *_ in out] == raw_ids
    assert [d["seq"] for *_, d in out] == list(range(6))
    assert "".join(d["content"] for _, e, d in out if e == "token") == "".join(words)
    meta = r.hgetall(keys.gen_meta(gid))
    assert (meta["status"], meta["completion_tokens"]) == ("completed", "5")
    assert streams.load_text(r, gid) == "one two three four five"
    # And everything is acknowledged and the raw stream gone, the work entry is gone; the events expire after the
    # resume window, the record (meta, text, terminal event) after the retention
    assert not r.exists(keys.gen_raw(gid))
    assert r.xlen(keys.WORK_STREAM) == 0
    window, retention = settings.resume_window_ms, settings.redis_stream_retention_ms
    assert 0 < r.pttl(keys.gen_out(gid)) <= window and 0 < r.pttl(keys.gen_request(gid)) <= window
    assert all(window < r.pttl(k) <= retention for k in (keys.gen_meta(gid), keys.gen_text(gid)))
    # And the terminal event is kept as readers got it: a plain done as its name and id in the record, rebuilt whole
    line = f"done {out[-1][0]} " + orjson.dumps(out[-1][2]).decode()
    assert meta["end"] == f"done {out[-1][0]}" and not r.exists(keys.gen_end(gid))
    assert ends.read(r.get(keys.gen_end(gid)), r.hmget(keys.gen_meta(gid), ends.FIELDS)) == line
    assert gid not in worker.owned


def test_an_end_the_record_cannot_give_back_is_kept_whole_for_the_retention(r: redis.Redis, settings: Settings) -> None:
    # Given a generation that ends with an error, and one whose done carries more than the record holds
    failed, extra = new_generation(r, settings, "gen_failed"), new_generation(r, settings, "gen_extra")
    writer = _write_tokens(r, failed, ["one "], finish=False)
    writer.write([("error", {"code": "provider_error", "message": "upstream said no"})])
    writer = _write_tokens(r, extra, ["one "], finish=False)
    writer.write([("done", {"finish_reason": "stop", "usage": {"prompt_tokens": 1, "completion_tokens": 1}, "x": 1})])
    # When a consumer commits them
    worker = _worker(r, settings)
    wait_for(lambda: _finished(r, failed)() and _finished(r, extra)(), step=lambda: worker.run_once(block_ms=50))
    # Then each terminal event is kept whole in :end, as readers got it, for the retention period
    for gid in (failed, extra):
        out = _out(r, gid)
        line = f"{out[-1][1]} {out[-1][0]} " + orjson.dumps(out[-1][2]).decode()
        assert r.get(keys.gen_end(gid)) == line and r.hget(keys.gen_meta(gid), "end") is None
        assert ends.read(r.get(keys.gen_end(gid)), r.hmget(keys.gen_meta(gid), ends.FIELDS)) == line
        assert settings.resume_window_ms < r.pttl(keys.gen_end(gid)) <= settings.redis_stream_retention_ms


def test_session_stream_carries_events_of_every_generation_with_their_id(r: redis.Redis, settings: Settings) -> None:
    a = new_generation(r, settings, "gen_a", session="chat")
    b = new_generation(r, settings, "gen_b", session="chat")
    _write_tokens(r, a, ["x "])
    _write_tokens(r, b, ["y "])
    worker = _worker(r, settings)
    wait_for(lambda: _finished(r, a)() and _finished(r, b)(), step=lambda: worker.run_once(block_ms=50))
    # Each session entry points at its event (kept once, in its generation's :out), in commit order
    entries = r.xrange(keys.session_out("chat"))
    assert all(set(fields) <= {"n", "i", "e"} for _, fields in entries)
    # And a reader gets each event whole, with its generation's id, under the session entry's id
    events = SessionResolver(r).resolve(
        keys.session_out("chat"), [decode_out(entry_id, fields) for entry_id, fields in entries]
    )
    assert [e.id for e in events] == [entry_id for entry_id, _ in entries]
    session = [(e.event, e.json()["generation_id"], e.json().get("content")) for e in events]
    expected = [("token", a, "x "), ("done", a, None), ("token", b, "y "), ("done", b, None)]
    assert sorted(session, key=str) == sorted(expected, key=str)
    outs = {e.json()["seq"] for e in events if e.json()["generation_id"] == a}
    assert outs == {0, 1}


def test_a_session_reader_gets_a_reset_for_a_generation_whose_events_are_gone(
    r: redis.Redis, settings: Settings
) -> None:
    # Given a session of two finished generations, the first one's events gone (its resume window passed)
    a = new_generation(r, settings, "gen_a", session="long")
    b = new_generation(r, settings, "gen_b", session="long")
    _write_tokens(r, a, ["old ", "text"])
    _write_tokens(r, b, ["new"])
    worker = _worker(r, settings)
    wait_for(lambda: _finished(r, a)() and _finished(r, b)(), step=lambda: worker.run_once(block_ms=50))
    r.delete(keys.gen_out(a))
    # When a reader reads the session from its start
    entries = r.xrange(keys.session_out("long"))
    events = SessionResolver(r).resolve(keys.session_out("long"), [decode_out(i, f) for i, f in entries])
    # Then it gets, for the first generation, a reset with its whole text and its terminal event; the second whole
    of_a = [(e.event, e.json()) for e in events if e.json()["generation_id"] == a]
    assert [name for name, _ in of_a] == ["reset", "done"]
    assert of_a[0][1]["text"] == "old text" and of_a[0][1]["next_seq"] == of_a[1][1]["seq"] == 2
    assert [e.json().get("content") for e in events if e.json()["generation_id"] == b] == ["new", None]
    ids = [e.id for e in events]
    assert ids == sorted(ids, key=lambda i: tuple(map(int, i.split("-"))))


def test_dropped_events_leave_no_hole_in_seq(r: redis.Redis, settings: Settings) -> None:
    class DropB(Processor):
        def process(self, gen: GenerationState, event: Event) -> Event | None:
            return None if event.data.get("content") == "b " else event

    gid = new_generation(r, settings, "gen_1")
    _write_tokens(r, gid, ["a ", "b ", "c "])
    worker = _worker(r, settings, [DropB(), PersistenceProcessor()])
    wait_for(_finished(r, gid), step=lambda: worker.run_once(block_ms=50))
    out = _out(r, gid)
    assert [(e, d["seq"]) for _, e, d in out] == [("token", 0), ("token", 1), ("done", 2)]
    assert streams.load_text(r, gid) == "a c "


def test_many_generations_are_read_in_one_blocking_call_each_in_order(r: redis.Redis, settings: Settings) -> None:
    gids = [new_generation(r, settings, f"gen_{i}") for i in range(20)]
    worker = _worker(r, settings)
    worker.run_once(block_ms=50)  # adopts all twenty
    assert set(worker.owned) == set(gids)
    for i, gid in enumerate(gids):
        _write_tokens(r, gid, [f"{i}-{n} " for n in range(10)])
    wait_for(lambda: all(_finished(r, g)() for g in gids), step=lambda: worker.run_once(block_ms=50))
    for i, gid in enumerate(gids):
        assert streams.load_text(r, gid) == "".join(f"{i}-{n} " for n in range(10))


def test_a_dead_consumers_generation_is_taken_over_from_the_first_unacknowledged_entry(
    r: redis.Redis, settings: Settings
) -> None:
    # Given consumer A committed three entries, then read four more and died before committing them
    gid = new_generation(r, settings, "gen_1")
    words = [f"w{i} " for i in range(10)]
    _write_tokens(r, gid, words)
    a = _worker(r, settings, name="consumer-a")
    a.batch = 3  # reads of three entries (CONSUMER_BATCH for this consumer)
    a.run_once(block_ms=50)  # adopts
    a.run_once(block_ms=50)  # processes w0..w2
    assert streams.load_text(r, gid) == "w0 w1 w2 "
    r.xreadgroup(settings.redis_consumer_group, "consumer-a", {keys.gen_raw(gid): ">"}, count=4)
    # When consumer B runs past the claim idle time
    b = _worker(r, settings, name="consumer-b")
    wait_for(_finished(r, gid), step=lambda: b.run_once(block_ms=50))
    # Then the reader sees every token once, in order
    out = _out(r, gid)
    assert "".join(d["content"] for _, e, d in out if e == "token") == "".join(words)
    assert [d["seq"] for *_, d in out] == list(range(11))
    assert len({i for i, *_ in out}) == len(out)
    # And A, coming back, notices it no longer owns the generation
    a.housekeeping()
    assert gid not in a.owned


def test_a_live_consumer_keeps_its_generations(r: redis.Redis, settings: Settings) -> None:
    gid = new_generation(r, settings, "gen_1")
    a = _worker(r, settings, name="consumer-a")
    b = _worker(r, settings, name="consumer-b")
    a.run_once(block_ms=50)
    assert gid in a.owned
    # Both run for three claim-idle periods: A's heartbeats keep its work entry fresh.
    until = time.monotonic() + 3 * settings.consumer_claim_idle_ms / 1000
    while time.monotonic() < until:
        a.run_once(block_ms=25)
        b.run_once(block_ms=25)
    assert gid in a.owned and gid not in b.owned


def test_entries_after_the_terminal_are_acknowledged_and_dropped(r: redis.Redis, settings: Settings) -> None:
    gid = new_generation(r, settings, "gen_1")
    _write_tokens(r, gid, ["a "])
    r.xadd(keys.gen_raw(gid), {"type": "token", "attempt": "1", "data": '{"content":"late","ts":1}'})
    worker = _worker(r, settings)
    wait_for(_finished(r, gid), step=lambda: worker.run_once(block_ms=50))
    assert [e for _, e, _ in _out(r, gid)] == ["token", "done"]
    assert not r.exists(keys.gen_raw(gid))  # every entry acknowledged, the raw stream deleted with the end


def test_a_generation_whose_streams_vanished_is_released(r: redis.Redis, settings: Settings) -> None:
    gid = new_generation(r, settings, "gen_1")
    worker = _worker(r, settings)
    worker.run_once(block_ms=50)
    r.delete(keys.gen_raw(gid))
    worker.run_once(block_ms=50)
    assert gid not in worker.owned
    assert r.xlen(keys.WORK_STREAM) == 0
    worker.run_once(block_ms=10)  # and the loop carries on


def test_a_consumer_that_stops_hands_its_generations_over_at_once(r: redis.Redis, settings: Settings) -> None:
    # Given consumer A owns a running generation (claim idle time: one minute)
    settings = settings.model_copy(update={"consumer_claim_idle_ms": 60_000})
    gid = new_generation(r, settings, "gen_1")
    a = _worker(r, settings, name="consumer-a")
    a.run_once(block_ms=20)
    assert gid in a.owned
    # When A stops gracefully
    a.stop()
    a.run()
    # Then B takes the generation over on its next housekeeping, without waiting a minute
    b = _worker(r, settings, name="consumer-b")
    b.run_once(block_ms=20)
    assert gid in b.owned


def test_every_generation_of_one_read_is_committed_in_one_round_trip(
    r: redis.Redis, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a consumer that owns 20 running generations, each with three new tokens waiting
    gids = [new_generation(r, settings, f"gen_{i}") for i in range(20)]
    worker = _worker(r, settings)
    wait_for(lambda: len(worker.owned) == 20, step=lambda: worker.run_once(block_ms=50))
    for gid in gids:
        _write_tokens(r, gid, ["a ", "b ", "c "], finish=False)
    batches: list[int] = []
    original = scripts.run_batch

    def counting(client: redis.Redis, calls: list[scripts.Call], **kw: Any) -> list[Any]:
        if calls and calls[0].source == scripts.COMMIT:
            batches.append(len(calls))
        return original(client, calls, **kw)

    monkeypatch.setattr(scripts, "run_batch", counting)
    # When it reads them all at once
    wait_for(lambda: all(streams.load_text(r, gid) == "a b c " for gid in gids), step=lambda: worker.run_once())
    # Then all 60 tokens went out in as many commits as reads, not one per generation
    assert sum(batches) == 20
    assert len(batches) < 5
    assert all([d["seq"] for *_, d in _out(r, gid)] == [0, 1, 2] for gid in gids)


def test_the_commit_that_ends_a_generation_releases_its_work_entry_and_running_slots(
    r: redis.Redis, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a running generation of an API key and an end user, holding a slot in each's running set
    gid = new_generation(r, settings, "gen_slots")
    r.hset(keys.gen_meta(gid), mapping={"api_key": "team", "user": "alice"})
    r.zadd(keys.key_running("team"), {gid: 1, "gen_other": 1})
    r.zadd(keys.user_running("team", "alice"), {gid: 1})
    worker = _worker(r, settings)
    wait_for(lambda: gid in worker.owned, step=lambda: worker.run_once(block_ms=50))
    sent: list[str] = []
    execute = redis.client.Pipeline.execute

    def recording(pipe: redis.client.Pipeline, *args: Any, **kw: Any) -> Any:
        sent.extend(str(command[0][0]) for command in pipe.command_stack)
        return execute(pipe, *args, **kw)

    monkeypatch.setattr(redis.client.Pipeline, "execute", recording)
    # When its last tokens and its end are committed
    _write_tokens(r, gid, ["a ", "b"])
    wait_for(_finished(r, gid), step=lambda: worker.run_once(block_ms=50))
    # Then that commit released everything the generation held, with no round trip of its own after it
    assert not {"XACK", "XDEL", "ZREM"} & set(sent)
    assert r.xpending(keys.WORK_STREAM, settings.redis_consumer_group)["pending"] == 0
    assert r.xlen(keys.WORK_STREAM) == 0
    assert r.zrange(keys.key_running("team"), 0, -1) == ["gen_other"]
    assert r.exists(keys.user_running("team", "alice")) == 0
    assert gid not in worker.owned


def test_a_generation_committed_before_the_text_key_existed_keeps_its_text(r: redis.Redis, settings: Settings) -> None:
    # Given a generation whose text an earlier version kept in :meta
    gid = new_generation(r, settings, "gen_old")
    r.hset(keys.gen_meta(gid), "text", "written by an earlier version")
    # Then its text is still there for readers
    assert streams.load_text(r, gid) == "written by an earlier version"
    # And once the commit appends to :text, that is the text
    r.set(keys.gen_text(gid), "new")
    assert streams.load_text(r, gid) == "new"


def test_a_paused_consumer_that_commits_after_a_takeover_writes_nothing_twice(
    r: redis.Redis, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given consumer A processed a batch of a generation in session s1 and stopped before committing it
    gid = new_generation(r, settings, "gen_1", session="s1")
    words = [f"w{i} " for i in range(4)]
    _write_tokens(r, gid, words)
    a = _worker(r, settings, name="consumer-a")
    flush = a.flush
    monkeypatch.setattr(a, "flush", lambda: None)
    a.run_once(block_ms=50)  # adopts
    a.run_once(block_ms=50)  # processes all five entries; the commit does not go out
    assert a._batches and not r.exists(keys.gen_out(gid))
    # When consumer B takes the generation over past the claim idle time and commits it
    b = _worker(r, settings, name="consumer-b")
    wait_for(_finished(r, gid), step=lambda: b.run_once(block_ms=50))
    # And A wakes up and commits what it held
    flush()
    # Then every event is in :out and in the session stream once, and the text is not doubled
    out = _out(r, gid)
    assert [d["seq"] for *_, d in out] == list(range(5))
    assert [e.json()["seq"] for e in _session(r, "s1")] == list(range(5))
    assert streams.load_text(r, gid) == "".join(words)


@pytest.mark.parametrize("noticed_by", ["heartbeat", "next entry"])
def test_a_paused_consumer_handed_a_new_entry_after_a_takeover_cannot_commit_it_with_a_stale_seq(
    r: redis.Redis, settings: Settings, noticed_by: str
) -> None:
    # Given consumer A committed the first tokens of a generation in session s1, then was paused past the claim
    # idle time, and consumer B took the generation over and committed the next tokens
    gid = new_generation(r, settings, "gen_1", session="s1")
    writer = _write_tokens(r, gid, ["w0 ", "w1 ", "w2 "], finish=False)
    a = _worker(r, settings, name="consumer-a")
    wait_for(lambda: r.hget(keys.gen_meta(gid), "seq") == "3", step=lambda: a.run_once(block_ms=50))
    b = _worker(r, settings, name="consumer-b")
    wait_for(lambda: gid in b.owned, step=lambda: b.run_once(block_ms=50))
    writer.write([("token", {"content": w, "ts": 1.0}) for w in ("w3 ", "w4 ")])
    wait_for(lambda: r.hget(keys.gen_meta(gid), "seq") == "5", step=lambda: b.run_once(block_ms=50))
    # When A continues and, before its housekeeping notices the takeover, its read is handed a new entry
    writer.write([("token", {"content": "w5 ", "ts": 1.0})])
    a._next_housekeeping = time.monotonic() + 60
    assert a.run_once(block_ms=50) == 1
    # Then A's commit of it (with the seq A had: 3) is refused: nothing written, nothing acknowledged
    assert [d["seq"] for *_, d in _out(r, gid)] == list(range(5))
    assert r.xpending(keys.gen_raw(gid), settings.redis_consumer_group)["pending"] == 1
    # And A lets the generation go at its next turn, leaving the entry pending
    a.run_once(block_ms=10)
    assert gid not in a.owned
    # And B claims the entry (at its heartbeat, or when the next entry's commit is refused) and commits it once
    if noticed_by == "next entry":
        writer.write([("token", {"content": "w6 ", "ts": 1.0})])
        b._next_housekeeping = time.monotonic() + 60
        wait_for(lambda: r.hget(keys.gen_meta(gid), "seq") == "7", step=lambda: b.run_once(block_ms=50))
    writer.write([("done", {"finish_reason": "stop", "usage": {"prompt_tokens": 1, "completion_tokens": 7}})])
    wait_for(_finished(r, gid), step=lambda: b.run_once(block_ms=50))
    words = [f"w{i} " for i in range(7 if noticed_by == "next entry" else 6)]
    out = _out(r, gid)
    assert [d["seq"] for *_, d in out] == list(range(len(words) + 1))
    assert "".join(d["content"] for _, e, d in out if e == "token") == "".join(words)
    assert [e.json()["seq"] for e in _session(r, "s1")] == list(range(len(words) + 1))
    assert streams.load_text(r, gid) == "".join(words)
    assert not r.exists(keys.gen_raw(gid))  # every entry acknowledged, the raw stream deleted with the end

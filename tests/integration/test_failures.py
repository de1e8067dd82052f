"""Failure handling in the consumer on a real Redis: poison entries, lost workers, queued too long, resync."""

from __future__ import annotations

import time
from typing import Any

import pytest
import redis

from bridge import keys, streams
from bridge.events import Event
from bridge.producer import GenerationWriter, Outcome
from bridge.scripts import Status
from bridge.settings import Settings
from tests.support import Moderation, new_generation, out_events, status_of, wait_for, write_entries
from workers.consumer import ConsumerWorker
from workers.processors import GenerationState, Processor, default_processors


def test_a_poison_entry_goes_to_the_dead_letter_stream_and_ends_its_generation(
    r: redis.Redis, settings: Settings
) -> None:
    # Given a generation with an entry a critical processor always fails on, and a healthy one beside it
    settings = settings.model_copy(update={"dead_letter_after": 3})
    bad = new_generation(r, settings, "gen_bad")
    good = new_generation(r, settings, "gen_good")
    writer = write_entries(r, bad, ["fine ", "poison ", "after "], done=False)
    write_entries(r, good, ["all ", "good"])
    moderation = Moderation()
    worker = ConsumerWorker(r, settings, [moderation, *default_processors(r)])
    # When the consumer runs
    wait_for(
        lambda: status_of(r, bad) == "failed" and status_of(r, good) == "completed",
        step=lambda: worker.run_once(block_ms=20),
    )
    # Then the entry was tried three times, dead-lettered with its error, and the generation ended with an error
    assert moderation.calls == 3
    [(_, dead)] = r.xrange(keys.DEAD_LETTERS)
    assert dead["generation_id"] == bad and "moderation backend" in dead["error"] and dead["deliveries"] == "3"
    events = out_events(r, bad)
    assert [e for e, _ in events] == ["token", "error"]
    assert events[-1][1]["code"] == "poison_entry"
    assert [d["seq"] for _, d in events] == [0, 1]
    # And the producer is fenced off, nothing stays pending, the other generation flowed
    assert writer.write([("token", {"content": "more", "ts": 1.0})]) is Outcome.FENCED
    assert not r.exists(keys.gen_raw(bad))  # nothing pending: acknowledged, deleted with the end
    assert [e for e, _ in out_events(r, good)] == ["token", "token", "done"]


def test_an_entry_that_fails_once_is_retried_and_passes(r: redis.Redis, settings: Settings) -> None:
    class Flaky(Processor):
        critical = True
        failed = False

        def process(self, gen: GenerationState, event: Event) -> Event | None:
            if not self.failed and event.data.get("content") == "b ":
                self.failed = True
                raise ConnectionError("moderation service timed out")
            return event

    gid = new_generation(r, settings, "gen_1")
    write_entries(r, gid, ["a ", "b ", "c "])
    worker = ConsumerWorker(r, settings, [Flaky(), *default_processors(r)])
    wait_for(lambda: status_of(r, gid) == "completed", step=lambda: worker.run_once(block_ms=20))
    assert streams.load_text(r, gid) == "a b c "
    assert [d["seq"] for _, d in out_events(r, gid)] == [0, 1, 2, 3]
    assert r.xlen(keys.DEAD_LETTERS) == 0


def test_a_malformed_entry_is_dead_lettered_at_once(r: redis.Redis, settings: Settings) -> None:
    gid = new_generation(r, settings, "gen_1")
    r.hset(keys.gen_meta(gid), "attempt", 1)
    r.xadd(keys.gen_raw(gid), {"type": "token", "attempt": "1", "data": "{not json"})
    worker = ConsumerWorker(r, settings, default_processors(r))
    wait_for(lambda: status_of(r, gid) == "failed", step=lambda: worker.run_once(block_ms=20))
    assert r.xlen(keys.DEAD_LETTERS) == 1
    assert out_events(r, gid)[-1][1]["code"] == "poison_entry"


def test_an_attempt_whose_lease_ran_out_is_enqueued_again(r: redis.Redis, settings: Settings) -> None:
    # Given a generation whose worker died after two tokens (its lease is gone)
    settings = settings.model_copy(update={"lease_ms": 600})
    gid = new_generation(r, settings, "gen_1")
    write_entries(r, gid, ["one ", "two "], done=False)
    r.delete(keys.gen_lease(gid))
    enqueued: list[str] = []
    worker = ConsumerWorker(r, settings, default_processors(r), enqueue=enqueued.append)
    # When the consumer supervises it
    wait_for(lambda: bool(enqueued), step=lambda: worker.run_once(block_ms=20))
    # Then it is enqueued once, not again while the new attempt gets going
    for _ in range(5):
        worker.run_once(block_ms=20)
    assert enqueued == [gid]
    # And the new attempt starts over with a restart event
    new = GenerationWriter(r, gid, lease_ms=10_000, max_length=1000)
    assert new.claim(reason="worker_lost") is Status.CLAIMED and new.attempt == 2
    new.write([("token", {"content": "uno ", "ts": 2.0}), ("done", {"finish_reason": "stop", "usage": {}})])
    wait_for(lambda: status_of(r, gid) == "completed", step=lambda: worker.run_once(block_ms=20))
    assert [e for e, _ in out_events(r, gid)] == ["token", "token", "restart", "token", "done"]
    assert streams.load_text(r, gid) == "uno "


def test_a_generation_that_keeps_losing_its_worker_ends_with_worker_lost(r: redis.Redis, settings: Settings) -> None:
    settings = settings.model_copy(update={"lease_ms": 500, "generation_max_attempts": 2})
    gid = new_generation(r, settings, "gen_1")
    worker = ConsumerWorker(r, settings, default_processors(r), enqueue=lambda g: None)
    for attempt in (1, 2):
        writer = GenerationWriter(r, gid, lease_ms=500, max_length=1000)
        assert writer.claim() is Status.CLAIMED and writer.attempt == attempt
        r.delete(keys.gen_lease(gid))  # the worker dies at once
        if attempt == 1:
            wait_for(lambda: r.hget(keys.gen_meta(gid), "requeues") == "1", step=lambda: worker.run_once(block_ms=20))
    wait_for(lambda: status_of(r, gid) == "failed", step=lambda: worker.run_once(block_ms=20))
    assert out_events(r, gid)[-1][1]["code"] == "worker_lost"


def test_a_generation_no_worker_starts_ends_with_queue_timeout(r: redis.Redis, settings: Settings) -> None:
    settings = settings.model_copy(update={"queue_timeout_s": 0.3})
    gid = new_generation(r, settings, "gen_1")
    worker = ConsumerWorker(r, settings, default_processors(r), enqueue=lambda g: None)
    wait_for(lambda: status_of(r, gid) == "failed", step=lambda: worker.run_once(block_ms=20))
    assert out_events(r, gid) == [
        ("error", {"code": "queue_timeout", "message": "No worker started this generation within 0.3 s.", "seq": 0})
    ]


def test_the_task_of_an_attempt_no_worker_starts_is_sent_again_a_bounded_number_of_times(
    r: redis.Redis, settings: Settings
) -> None:
    # Given a generation whose task message is lost (no worker ever takes it)
    settings = settings.model_copy(update={"task_resend_s": 0.05, "task_max_resends": 2, "queue_timeout_s": 60})
    gid = new_generation(r, settings, "gen_1")
    sent: list[str] = []
    worker = ConsumerWorker(r, settings, default_processors(r), enqueue=sent.append)
    # When the consumer supervises it for a while
    wait_for(lambda: len(sent) == 2, step=lambda: worker.run_once(block_ms=20))
    for _ in range(10):
        worker.run_once(block_ms=20)
    # Then its task was sent again twice, no more, with the time of the last send kept with the generation
    assert sent == [gid, gid]
    meta = r.hgetall(keys.gen_meta(gid))
    assert meta["resends"] == "2" and int(meta["sent_at"]) > 0
    assert status_of(r, gid) == "queued" and meta["attempt"] == "0"


def test_a_task_waiting_its_turn_in_a_backlog_is_not_sent_again_until_the_queue_has_drained(
    r: redis.Redis, settings: Settings
) -> None:
    # Given a generation not started while tasks wait in the broker's queue (a backlog, not a lost message)
    settings = settings.model_copy(update={"task_resend_s": 0.05, "task_max_resends": 2, "queue_timeout_s": 60})
    gid = new_generation(r, settings, "gen_1")
    sent: list[str] = []
    queued = [40]
    worker = ConsumerWorker(r, settings, default_processors(r), enqueue=sent.append, waiting_tasks=lambda: queued[0])
    # When the consumer supervises it for a while
    deadline = time.monotonic() + 0.5
    while time.monotonic() < deadline:
        worker.run_once(block_ms=20)
    # Then its task is not sent again, and no re-send is used up (each was due, and held back)
    assert sent == [] and r.hget(keys.gen_meta(gid), "resends") == "0"
    assert int(r.hget(keys.gen_meta(gid), "sent_at") or 0) > 0
    # And once the queue has drained and it still has not started, its task is sent again
    queued[0] = 0
    wait_for(lambda: sent == [gid], step=lambda: worker.run_once(block_ms=20))


def test_an_external_generation_waiting_for_its_first_token_has_no_task_to_send_again(
    r: redis.Redis, settings: Settings
) -> None:
    settings = settings.model_copy(update={"task_resend_s": 0.05, "queue_timeout_s": 60})
    gid = new_generation(r, settings, "gen_1", model="external")
    sent: list[str] = []
    worker = ConsumerWorker(r, settings, default_processors(r), enqueue=sent.append)
    for _ in range(15):
        worker.run_once(block_ms=20)
    assert sent == [] and r.hget(keys.gen_meta(gid), "resends") is None


@pytest.mark.parametrize("lost", ["before", "after"])
def test_after_a_failed_commit_the_consumer_resyncs_without_loss_or_duplicate(
    r: redis.Redis, settings: Settings, monkeypatch: pytest.MonkeyPatch, lost: str
) -> None:
    # Given a consumer whose commit fails once on the connection, before or after the transaction ran
    gid = new_generation(r, settings, "gen_1")
    worker = ConsumerWorker(r, settings, default_processors(r))
    worker.run_once(block_ms=20)
    write_entries(r, gid, [f"w{i} " for i in range(6)])
    original = worker.flush
    calls = {"n": 0}

    def flaky_commit(*args: Any, **kwargs: Any) -> None:
        calls["n"] += 1
        if calls["n"] == 1 and lost == "before":
            raise redis.ConnectionError("connection reset")
        original(*args, **kwargs)
        if calls["n"] == 1:
            raise redis.ConnectionError("reply lost")

    monkeypatch.setattr(worker, "flush", flaky_commit)
    # When the loop carries on the way run() does after an error
    for _ in range(50):
        try:
            worker.run_once(block_ms=20)
        except redis.ConnectionError:
            worker._resync = True
        if status_of(r, gid) == "completed":
            break
    # Then the text is exact and seq has no gap or duplicate
    assert streams.load_text(r, gid) == "".join(f"w{i} " for i in range(6))
    assert [d["seq"] for _, d in out_events(r, gid)] == list(range(7))

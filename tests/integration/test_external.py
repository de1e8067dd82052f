"""External producers through the Python API (a service sharing the Redis), read back through a consumer."""

from __future__ import annotations

import orjson
import pytest
import redis

from bridge import keys
from bridge.external import ExternalProducerError, append_tokens, open_generation
from bridge.scripts import Status
from bridge.settings import Settings
from tests.support import new_generation, wait_for
from workers.consumer import ConsumerWorker
from workers.processors import default_processors


def _out(r: redis.Redis, gid: str) -> list[tuple[str, dict[str, object]]]:
    return [(f["event"], orjson.loads(f["data"])) for _, f in r.xrange(keys.gen_out(gid))]


def test_open_generation_writes_tokens_and_completes(r: redis.Redis, settings: Settings) -> None:
    worker = ConsumerWorker(r, settings, default_processors(r))
    with open_generation(r, settings, prompt="question", session_id="svc") as generation:
        generation.write("The ")
        generation.write("answer", " is", " 42.")
    wait_for(
        lambda: r.hget(keys.gen_meta(generation.id), "status") == "completed", step=lambda: worker.run_once(block_ms=20)
    )
    events = _out(r, generation.id)
    assert "".join(str(d["content"]) for e, d in events if e == "token") == "The answer is 42."
    assert events[-1][0] == "done"
    assert r.hget(keys.gen_meta(generation.id), "session_id") == "svc"


def test_an_exception_in_the_producer_ends_the_generation_with_an_error(r: redis.Redis, settings: Settings) -> None:
    worker = ConsumerWorker(r, settings, default_processors(r))
    with pytest.raises(RuntimeError), open_generation(r, settings, prompt="q") as generation:
        generation.write("half ")
        raise RuntimeError("model crashed")
    wait_for(
        lambda: r.hget(keys.gen_meta(generation.id), "status") == "failed", step=lambda: worker.run_once(block_ms=20)
    )
    assert _out(r, generation.id)[-1] == (
        "error",
        {"code": "producer_error", "message": "The producer failed: RuntimeError", "seq": 1},
    )


def test_batches_are_accepted_once_and_gaps_refused(r: redis.Redis, settings: Settings) -> None:
    with open_generation(r, settings, prompt="q") as generation:
        gid = generation.id
        assert append_tokens(r, gid, 0, ["a", "b"], settings=settings).status is Status.APPENDED
        assert append_tokens(r, gid, 0, ["a", "b"], settings=settings).status is Status.DUPLICATE
        overlap = append_tokens(r, gid, 1, ["b", "c"], settings=settings)
        assert (overlap.status, overlap.next_index) == (Status.APPENDED, 3)
        gap = append_tokens(r, gid, 5, ["x"], settings=settings)
        assert (gap.status, gap.next_index) == (Status.GAP, 3)
        generation.index = 3
    assert [orjson.loads(f["data"])["content"] for _, f in r.xrange(keys.gen_raw(gid)) if f["type"] == "token"] == [
        "a",
        "b",
        "c",
    ]
    with pytest.raises(ExternalProducerError):
        generation.write("after the end")


def test_a_producer_that_goes_silent_is_timed_out(r: redis.Redis, settings: Settings) -> None:
    # Given an external generation that got one token and then nothing for longer than its idle timeout
    settings = settings.model_copy(update={"external_idle_timeout_s": 0.2})
    gid = new_generation(r, settings, "gen_ext", model="external")
    append_tokens(r, gid, 0, ["only "], settings=settings)
    enqueued: list[str] = []
    worker = ConsumerWorker(r, settings, default_processors(r), enqueue=enqueued.append)
    # When the consumer supervises it
    wait_for(lambda: r.hget(keys.gen_meta(gid), "status") == "failed", step=lambda: worker.run_once(block_ms=20))
    # Then it ends with producer_timeout, and no task was enqueued for it
    assert _out(r, gid)[-1][1]["code"] == "producer_timeout"
    assert enqueued == []

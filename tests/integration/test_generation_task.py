"""The generation task's body on a real Redis (without Celery): provider → coalesced, fenced writes → terminal.

What a Celery worker adds (delivery, redelivery, cancel, retries) is in ``test_generate_task_worker.py``.
"""

from __future__ import annotations

from pathlib import Path

import orjson
import redis

from bridge import keys
from bridge.producer import GenerationWriter
from bridge.scripts import Status
from bridge.settings import Settings
from tasks.generation import run_generation
from tests.support import new_generation


def _raw(r: redis.Redis, gid: str) -> list[tuple[str, dict[str, object]]]:
    return [(f["type"], orjson.loads(f["data"])) for _, f in r.xrange(keys.gen_raw(gid))]


def _set_request(r: redis.Redis, gid: str, request: dict[str, object]) -> None:
    """Store ``request`` as the generation's, as a submission does (its model in ``:meta`` too)."""
    r.set(keys.gen_request(gid), orjson.dumps(request))
    r.hset(keys.gen_meta(gid), "model", str(request["model"]))


def test_tokens_produced_together_take_few_round_trips(r: redis.Redis, settings: Settings) -> None:
    # Given 500 tokens produced at once
    gid = new_generation(r, settings, "gen_1")
    _set_request(
        r, gid, {"model": "synthetic", "prompt": "x", "max_tokens": 500, "options": {"tokens_per_second": 100000}}
    )
    r.config_resetstat()
    # When the task writes them
    run_generation(r, settings.model_copy(update={"flush_window_ms": 20}), gid)
    # Then they went to Redis in a handful of script calls, not 500
    stats = r.info("commandstats")
    calls = sum(v["calls"] for k, v in stats.items() if k in ("cmdstat_evalsha", "cmdstat_eval"))
    assert len(_raw(r, gid)) == 501
    assert calls < 50


def test_an_invalid_stored_request_ends_with_an_error(r: redis.Redis, settings: Settings) -> None:
    gid = new_generation(r, settings, "gen_1")
    _set_request(r, gid, {"model": "no-such-model", "prompt": "x"})
    assert run_generation(r, settings, gid) == "failed"
    [(event, data)] = _raw(r, gid)
    assert event == "error" and data["code"] == "invalid_request"


def test_a_model_at_its_concurrency_limit_defers_new_generations(
    r: redis.Redis, settings: Settings, tmp_path: Path
) -> None:
    from bridge.models import registry_for

    # Given a model that may run one generation at a time, and one running
    models = tmp_path / "models.toml"
    models.write_text(
        '[models.one-at-a-time]\nprovider = "openai"\nbase_url = "http://127.0.0.1:9/v1"\nconcurrency = 1\n'
    )
    settings = settings.model_copy(update={"models_file": str(models), "provider_retries": 0})
    registry_for.cache_clear()
    r.zadd(keys.model_running("one-at-a-time"), {"gen_running": 10**15})
    gid = new_generation(r, settings, "gen_waiting", model="one-at-a-time")
    _set_request(r, gid, {"model": "one-at-a-time", "prompt": "x"})
    # When its task runs, the generation is deferred, untouched (its task noted as alive, not to be sent again)
    assert run_generation(r, settings, gid) == "deferred"
    assert r.hget(keys.gen_meta(gid), "attempt") == "0"
    assert int(r.hget(keys.gen_meta(gid), "sent_at") or 0) > 0
    assert _raw(r, gid) == []
    # And once the slot frees, it starts (and gives the slot back when done)
    r.delete(keys.model_running("one-at-a-time"))
    assert run_generation(r, settings, gid) == "finished"  # the upstream is unreachable: it ends with an error
    assert _raw(r, gid)[-1][0] == "error"
    assert r.zcard(keys.model_running("one-at-a-time")) == 0


def test_a_refused_copy_of_the_task_leaves_the_running_attempts_slot_taken(
    r: redis.Redis, settings: Settings, tmp_path: Path
) -> None:
    from bridge.models import registry_for

    # Given a model that may run one generation at a time, and a generation whose attempt runs and holds the slot
    models = tmp_path / "models.toml"
    models.write_text(
        '[models.one-at-a-time]\nprovider = "openai"\nbase_url = "http://127.0.0.1:9/v1"\nconcurrency = 1\n'
    )
    settings = settings.model_copy(update={"models_file": str(models), "provider_retries": 0})
    registry_for.cache_clear()
    slot = keys.model_running("one-at-a-time")
    gid = new_generation(r, settings, "gen_running", model="one-at-a-time")
    _set_request(r, gid, {"model": "one-at-a-time", "prompt": "x"})
    r.zadd(slot, {gid: 10**15})
    holder = GenerationWriter(r, gid, lease_ms=10_000, max_length=1000)
    assert holder.claim() is Status.CLAIMED and holder.attempt == 1
    # When a copy of its task runs (redelivered, or sent again)
    assert run_generation(r, settings, gid) == "skipped:held"
    # Then the copy is refused and the running attempt keeps its slot: no other generation of the model starts
    assert r.zscore(slot, gid) is not None
    other = new_generation(r, settings, "gen_other", model="one-at-a-time")
    _set_request(r, other, {"model": "one-at-a-time", "prompt": "y"})
    assert run_generation(r, settings, other) == "deferred"
    registry_for.cache_clear()

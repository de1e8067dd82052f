"""Token budgets on a real Redis: counted on what the chain committed, enforced on running generations."""

from __future__ import annotations

import redis

from bridge import budgets, keys
from bridge.budgets import Budget
from bridge.settings import Settings
from tests.support import new_generation, out_events, status_of, wait_for, write_entries
from workers.consumer import ConsumerWorker
from workers.processors import TokenBudgetProcessor, default_processors


def _with_budget(r: redis.Redis, settings: Settings, gid: str, key: str, per_minute: int) -> str:
    new_generation(r, settings, gid)
    r.hset(keys.gen_meta(gid), mapping={"api_key": key, "budget": f"{per_minute},0"})
    return gid


def test_what_the_chain_commits_is_counted_per_key_in_both_windows(r: redis.Redis, settings: Settings) -> None:
    # Given two finished generations of one key with a budget, and one of a key without
    a = _with_budget(r, settings, "gen_a", "app", 1000)
    b = _with_budget(r, settings, "gen_b", "app", 1000)
    c = new_generation(r, settings, "gen_c")
    for gid, words in ((a, ["one ", "two "]), (b, ["three "]), (c, ["free ", "tokens "])):
        write_entries(r, gid, words)
    worker = ConsumerWorker(r, settings, default_processors(r))
    # When the consumer commits them (and writes its counts when due)
    wait_for(lambda: all(status_of(r, g) == "completed" for g in (a, b, c)), step=lambda: worker.run_once(block_ms=20))
    wait_for(lambda: budgets.usage(r, "app", Budget(1000)).minute == 3, step=lambda: worker.run_once(block_ms=20))
    # Then the key's windows hold its three tokens, in the minute and the day
    assert budgets.usage(r, "app", Budget(1000)).day == 3


def test_a_key_past_its_budget_has_its_running_generation_ended_with_rate_limited(
    r: redis.Redis, settings: Settings
) -> None:
    # Given a key allowed 5 tokens a minute and a generation of it that produces 12, without an end yet
    gid = _with_budget(r, settings, "gen_long", "small", 5)
    write_entries(r, gid, [f"w{i} " for i in range(12)], done=False)
    processors = [p for p in default_processors(r) if not isinstance(p, TokenBudgetProcessor)]
    worker = ConsumerWorker(r, settings, [*processors, TokenBudgetProcessor(r, flush_s=0)])
    # When the consumer commits its tokens
    wait_for(lambda: status_of(r, gid) == "failed", step=lambda: worker.run_once(block_ms=20))
    # Then the generation ended with rate_limited (what was committed before stays), and new work is refused
    events = out_events(r, gid)
    assert events[-1][0] == "error" and events[-1][1]["code"] == "rate_limited"
    usage = budgets.usage(r, "small", Budget(5))
    assert usage.exceeded == "minute" and 1 <= usage.retry_after_s <= 61
    # The overshoot: what was committed past the limit before the end (one read's worth at most here)
    assert 5 < usage.minute <= 12

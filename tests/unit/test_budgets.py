"""Token budgets: the windows, what a key has used, and the token-budget processor (on fakeredis)."""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace

import fakeredis
import pytest
from redis.crc import key_slot

from bridge import budgets, keys
from bridge.budgets import Budget, Usage
from bridge.events import Event
from workers import processors
from workers.processors import GenerationState, TokenBudgetProcessor

# 2024-01-02 00:05:30 UTC: day 19724, minute 28402565, 30 s into it.
NOW = 19_724 * 86_400 + 5 * 60 + 30


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> SimpleNamespace:
    """The wall clock of ``bridge.budgets`` and the monotonic clock of the processors, set by the test."""
    fake = SimpleNamespace(now=float(NOW), mono=1_000.0)
    monkeypatch.setattr(budgets, "time", SimpleNamespace(time=lambda: fake.now))
    monkeypatch.setattr(
        processors,
        "time",
        SimpleNamespace(time=lambda: fake.now, monotonic=lambda: fake.mono, perf_counter=lambda: fake.mono),
    )
    return fake


def _gen(gid: str, key: str, budget: tuple[int, int]) -> GenerationState:
    return GenerationState.from_meta(gid, {"api_key": key, "budget": f"{budget[0]},{budget[1]}"})


def test_a_keys_windows_are_its_utc_minute_and_day_in_one_slot() -> None:
    minute, day = budgets.window_keys("app", NOW)
    assert (minute, day) == ("llm:budget:{app}:m:28402565", "llm:budget:{app}:d:19724")
    assert key_slot(minute.encode()) == key_slot(day.encode())
    # The minute turns 30 s later, the day at midnight UTC; another key has windows of its own
    assert budgets.window_keys("app", NOW + 29)[0] == minute
    assert budgets.window_keys("app", NOW + 30)[0] != minute
    assert budgets.window_keys("app", NOW + 86_400 - 331)[1] == day
    assert budgets.window_keys("app", NOW + 86_400 - 330)[1] != day
    assert set(budgets.window_keys("other", NOW)).isdisjoint({minute, day})


def test_tokens_add_up_in_both_windows_which_expire(fake_redis: fakeredis.FakeRedis, clock: SimpleNamespace) -> None:
    pipe = fake_redis.pipeline(transaction=False)
    budgets.add(pipe, "app", 5, NOW)
    budgets.add(pipe, "app", 7, NOW)
    totals = pipe.execute()[0::2]
    assert totals == [5, 5, 12, 12]
    minute, day = budgets.window_keys("app", NOW)
    assert 0 < fake_redis.ttl(minute) <= 120 and 86_400 < fake_redis.ttl(day) <= 2 * 86_400
    used = budgets.usage(fake_redis, "app", Budget(per_minute=100))
    assert (used.minute, used.day) == (12, 12)
    # A minute later only the day still counts them
    clock.now += 60
    later = budgets.usage(fake_redis, "app", Budget())
    assert (later.minute, later.day) == (0, 12)


@pytest.mark.parametrize(
    ("minute", "day", "budget", "exceeded"),
    [
        (10**9, 10**9, Budget(), None),  # no limits
        (99, 99, Budget(per_minute=100), None),
        (100, 100, Budget(per_minute=100), "minute"),  # reaching the limit spends it
        (5, 1000, Budget(per_minute=100, per_day=1000), "day"),
        (100, 1000, Budget(per_minute=100, per_day=1000), "day"),  # the longer wait is the one to tell
        (100, 999, Budget(per_minute=100, per_day=1000), "minute"),
    ],
)
def test_a_budget_is_spent_once_a_window_reaches_its_limit(
    minute: int, day: int, budget: Budget, exceeded: str | None
) -> None:
    assert Usage(minute, day, budget, NOW).exceeded == exceeded


def test_retry_after_is_the_time_until_the_spent_window_ends() -> None:
    # 30 s into the minute, 330 s into the day
    assert Usage(100, 100, Budget(per_minute=100), NOW).retry_after_s == 31
    assert Usage(0, 1000, Budget(per_day=1000), NOW).retry_after_s == 86_400 - 330 + 1
    # At the last moment of a window it is still at least a second
    assert Usage(100, 100, Budget(per_minute=100), NOW + 29.999).retry_after_s >= 1


def test_the_public_usage_names_no_limit_as_none() -> None:
    assert Usage(3, 4, Budget(per_day=50), NOW).public() == {
        "tokens_this_minute": 3,
        "tokens_today": 4,
        "tokens_per_minute": None,
        "tokens_per_day": 50,
    }
    assert not Budget().limited and Budget(per_day=1).limited


@pytest.mark.parametrize(("stored", "budget"), [("5,100", (5, 100)), ("0,0", (0, 0)), ("", (0, 0)), ("x,1", (0, 0))])
def test_a_generation_carries_the_budget_written_at_its_creation(stored: str, budget: tuple[int, int]) -> None:
    assert GenerationState.from_meta("gen_a", {"api_key": "app", "budget": stored}).budget == budget


@pytest.fixture
def budget_processor(fake_redis: fakeredis.FakeRedis, clock: SimpleNamespace) -> TokenBudgetProcessor:
    return TokenBudgetProcessor(fake_redis, flush_s=0.25)


def _commit(processor: TokenBudgetProcessor, clock: SimpleNamespace) -> Callable[..., list[tuple[str, str, str]]]:
    def commit(*tokens: tuple[GenerationState, int]) -> list[tuple[str, str, str]]:
        clock.mono += 1  # past the flush interval: each commit is written
        return processor.committed(list(tokens))

    return commit


def test_committed_tokens_are_counted_per_key_only_for_keys_with_a_budget(
    fake_redis: fakeredis.FakeRedis, budget_processor: TokenBudgetProcessor, clock: SimpleNamespace
) -> None:
    a, b = _gen("gen_a", "app", (1000, 0)), _gen("gen_b", "app", (1000, 0))
    free = _gen("gen_c", "free", (0, 0))
    for gen in (a, b, free):
        budget_processor.start(gen)
    commit = _commit(budget_processor, clock)
    assert commit((a, 3), (b, 2), (free, 50)) == []
    assert commit((a, 0), (b, 4)) == []
    assert budgets.usage(fake_redis, "app", Budget()).minute == 9
    assert budgets.usage(fake_redis, "free", Budget()).day == 0


def test_counts_are_written_at_most_once_per_flush_interval(
    fake_redis: fakeredis.FakeRedis, budget_processor: TokenBudgetProcessor, clock: SimpleNamespace
) -> None:
    gen = _gen("gen_a", "app", (1000, 0))
    budget_processor.start(gen)
    # Given a first commit written at once
    budget_processor.committed([(gen, 1)])
    # When more commits follow within the flush interval
    for _ in range(5):
        clock.mono += 0.01
        budget_processor.committed([(gen, 2)])
    # Then nothing more reaches Redis until the interval has passed, and then all of it at once
    assert budgets.usage(fake_redis, "app", Budget()).minute == 1
    clock.mono += 0.25
    budget_processor.committed([])
    assert budgets.usage(fake_redis, "app", Budget()).minute == 11


def test_a_key_past_its_minute_budget_has_its_running_generations_ended(
    budget_processor: TokenBudgetProcessor, clock: SimpleNamespace
) -> None:
    # Given two running generations of a key allowed 10 tokens a minute, and one of another key
    a, b, other = _gen("gen_b", "app", (10, 0)), _gen("gen_a", "app", (10, 0)), _gen("gen_o", "other", (10, 0))
    for gen in (a, b, other):
        budget_processor.start(gen)
    commit = _commit(budget_processor, clock)
    # When they produce exactly the budget, nothing ends (new submissions are refused at the edge instead)
    assert commit((a, 6), (b, 4), (other, 1)) == []
    # Then one token more ends both of the key's generations, and only them
    ended = commit((a, 1))
    assert [(gid, code) for gid, code, _ in ended] == [("gen_a", "rate_limited"), ("gen_b", "rate_limited")]
    assert all("minute" in message for _, _, message in ended)


def test_a_spent_day_is_named_and_a_finished_generation_is_not_ended_again(
    budget_processor: TokenBudgetProcessor, clock: SimpleNamespace
) -> None:
    a, b = _gen("gen_a", "app", (0, 5)), _gen("gen_b", "app", (0, 5))
    budget_processor.start(a)
    budget_processor.start(b)
    budget_processor.finish(a, Event(id="9-0", type="done", data={"finish_reason": "stop"}))
    [(gid, code, message)] = _commit(budget_processor, clock)((b, 6))
    assert (gid, code) == ("gen_b", "rate_limited") and "day" in message
    budget_processor.finish(b, Event(id="9-1", type="error", data={"code": "rate_limited"}))
    assert _commit(budget_processor, clock)((b, 1)) == []


def _user_gen(
    gid: str, user: str, user_budget: tuple[int, int], key_budget: tuple[int, int] = (0, 0)
) -> GenerationState:
    meta = {"api_key": "app", "budget": ",".join(map(str, key_budget)), "user": user}
    meta["user_budget"] = ",".join(map(str, user_budget))
    return GenerationState.from_meta(gid, meta)


def test_an_end_users_tokens_count_in_windows_of_its_own_apart_from_the_others(
    fake_redis: fakeredis.FakeRedis, budget_processor: TokenBudgetProcessor, clock: SimpleNamespace
) -> None:
    # Given two end users of one key, each allowed 10 tokens a minute, the key itself unlimited
    alice, bob = _user_gen("gen_a", "alice", (10, 0)), _user_gen("gen_b", "bob", (10, 0))
    for gen in (alice, bob):
        budget_processor.start(gen)
    # When they produce
    assert _commit(budget_processor, clock)((alice, 4), (bob, 6)) == []
    # Then each user's windows hold its own tokens, and the key has none counted (it has no budget)
    assert budgets.usage(fake_redis, keys.user_budget_name("app", "alice"), Budget()).minute == 4
    assert budgets.usage(fake_redis, keys.user_budget_name("app", "bob"), Budget()).day == 6
    assert budgets.usage(fake_redis, "app", Budget()).minute == 0


def test_an_end_user_past_its_budget_has_its_generations_ended_and_the_others_go_on(
    budget_processor: TokenBudgetProcessor, clock: SimpleNamespace
) -> None:
    # Given two generations of one greedy end user and one of another user of the same key
    greedy = [_user_gen("gen_g1", "greedy", (10, 0)), _user_gen("gen_g2", "greedy", (10, 0))]
    modest = _user_gen("gen_m", "modest", (10, 0))
    for gen in (*greedy, modest):
        budget_processor.start(gen)
    # When the greedy user goes past its 10 tokens
    ended = _commit(budget_processor, clock)((greedy[0], 8), (greedy[1], 3), (modest, 5))
    # Then only its generations end, with rate_limited naming the end user's budget
    assert [(gid, code) for gid, code, _ in ended] == [("gen_g1", "rate_limited"), ("gen_g2", "rate_limited")]
    assert all("end user's token budget for this minute" in message for _, _, message in ended)


def test_a_generation_past_both_its_keys_and_its_users_budget_is_ended_once(
    budget_processor: TokenBudgetProcessor, clock: SimpleNamespace
) -> None:
    gen = _user_gen("gen_a", "alice", (5, 0), key_budget=(5, 0))
    budget_processor.start(gen)
    [(gid, code, message)] = _commit(budget_processor, clock)((gen, 6))
    assert (gid, code) == ("gen_a", "rate_limited") and "API key" in message


def test_a_generation_carries_its_end_user_and_the_users_budget() -> None:
    gen = _user_gen("gen_a", "alice", (10, 100))
    assert (gen.user, gen.user_budget) == ("alice", (10, 100))
    assert GenerationState.from_meta("gen_b", {"api_key": "app"}).user == ""

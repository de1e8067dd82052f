from __future__ import annotations

import logging

import fakeredis
import pytest
from prometheus_client import REGISTRY, generate_latest

from bridge import keys
from bridge.events import Event
from workers.metrics import PROCESSOR_SECONDS
from workers.processors import (
    AnalyticsProcessor,
    Chain,
    GenerationState,
    LoggingProcessor,
    PersistenceProcessor,
    Processor,
)


class Upper(Processor):
    name = "upper"

    def process(self, gen: GenerationState, event: Event) -> Event | None:
        if event.type == "token":
            event.data["content"] = event.data["content"].upper()
        return event


class DropSecrets(Processor):
    name = "drop-secrets"

    def process(self, gen: GenerationState, event: Event) -> Event | None:
        return None if "secret" in event.data.get("content", "") else event


class Broken(Processor):
    name = "broken"

    def process(self, gen: GenerationState, event: Event) -> Event | None:
        raise RuntimeError("processor bug")


class DropAll(Processor):
    name = "drop-all"

    def process(self, gen: GenerationState, event: Event) -> Event | None:
        return None


def _token(content: str, n: int = 1) -> Event:
    return Event(id=f"{n}-0", type="token", data={"content": content, "ts": 100.0 + n})


def _gen() -> GenerationState:
    return GenerationState(generation_id="gen_a", model="echo", created_at=99.5)


def test_processors_run_in_order_and_persistence_keeps_what_readers_see() -> None:
    chain = Chain([DropSecrets(), Upper(), PersistenceProcessor()])
    gen = _gen()
    outputs = [chain.process(gen, _token(c, i)) for i, c in enumerate(["hello ", "secret ", "world"], 1)]
    assert [o.data["content"] if o else None for o in outputs] == ["HELLO ", None, "WORLD"]
    assert gen.meta_updates["completion_tokens"] == 2
    assert gen.first_token_at == 101.0


def test_a_processor_that_raises_is_logged_and_skipped(caplog: pytest.LogCaptureFixture) -> None:
    chain = Chain([Broken(), Upper()])
    with caplog.at_level(logging.ERROR):
        out = chain.process(_gen(), _token("abc"))
    assert out is not None and out.data["content"] == "ABC"
    assert "broken" in caplog.text


def test_terminal_events_cannot_be_dropped() -> None:
    done = Event(id="9-0", type="done", data={"finish_reason": "stop", "usage": {}})
    assert Chain([DropAll()]).process(_gen(), done) is done


def test_persistence_records_status_usage_and_errors() -> None:
    gen = _gen()
    persistence = PersistenceProcessor()
    persistence.process(gen, Event(id="1-0", type="restart", data={"reason": "worker_lost"}))
    assert gen.meta_updates["completion_tokens"] == 0
    persistence.process(gen, Event(id="2-0", type="error", data={"code": "provider_error", "message": "x"}))
    assert gen.meta_updates["status"] == "failed"
    assert b"provider_error" in gen.meta_updates["error"]


def test_logging_writes_one_summary_line_per_generation(caplog: pytest.LogCaptureFixture) -> None:
    gen = _gen()
    gen.completion_tokens = 7
    gen.first_token_at = 100.0
    with caplog.at_level(logging.INFO, logger="workers.processors"):
        LoggingProcessor().finish(gen, Event(id="3-0", type="done", data={"finish_reason": "stop"}))
    [record] = caplog.records
    assert record.generation_id == "gen_a"  # type: ignore[attr-defined]
    assert record.tokens == 7  # type: ignore[attr-defined]
    assert record.ttft_ms == pytest.approx(500.0)  # type: ignore[attr-defined]


def test_processors_that_only_start_or_finish_cost_nothing_per_event() -> None:
    class Summary(Processor):
        name = "summary-only"

        def finish(self, gen: GenerationState, event: Event) -> None:
            pass

    def timed(name: str) -> float:
        return REGISTRY.get_sample_value("tokenbridge_processor_seconds_count", {"processor": name}) or 0.0

    chain = Chain([Summary(), Upper()])
    before_summary, before_upper = timed("summary-only"), timed(Upper.name)
    for i in range(3):
        chain.process(_gen(), _token("x", i))
    assert timed("summary-only") == before_summary
    assert timed(Upper.name) == before_upper + 3


def test_persistence_records_how_a_generation_ended() -> None:
    # A done event: its usage (the model's count wins over the chain's) and finish reason
    gen = _gen()
    PersistenceProcessor().process(gen, _token("a"))
    done = Event(id="2-0", type="done", data={"finish_reason": "length", "usage": {"prompt_tokens": 4}})
    PersistenceProcessor().process(gen, done)
    updates = gen.meta_updates
    assert (updates["status"], updates["finish_reason"], updates["prompt_tokens"]) == ("completed", "length", 4)
    assert updates["completion_tokens"] == 1 and "finished_at" in updates
    # A cancel
    cancelled = _gen()
    PersistenceProcessor().process(cancelled, Event(id="3-0", type="cancelled", data={}))
    assert (cancelled.meta_updates["status"], cancelled.meta_updates["finish_reason"]) == ("cancelled", "cancelled")


def _analytics_gen(**fields: object) -> GenerationState:
    values: dict[str, object] = {"generation_id": "gen_a", "model": "echo", "created_at": 100.0}
    values.update(fields)
    return GenerationState(**values)  # type: ignore[arg-type]


def test_analytics_counts_generations_by_status_with_their_tokens(fake_redis: fakeredis.FakeRedis) -> None:
    analytics = AnalyticsProcessor(fake_redis)
    done = Event(id="9-0", type="done", data={"finish_reason": "stop"})
    analytics.finish(_analytics_gen(completion_tokens=5, first_token_at=100.25), done)
    analytics.finish(_analytics_gen(completion_tokens=2), Event(id="9-1", type="error", data={"code": "x"}))
    analytics.finish(_analytics_gen(model="", completion_tokens=1), done)
    # Nothing is written per generation: the next commit writes them all, in one round trip
    assert fake_redis.hgetall(keys.stats("echo")) == {}
    analytics.committed([])
    assert fake_redis.hgetall(keys.stats("echo")) == {
        "generations": "2",
        "status:completed": "1",
        "status:failed": "1",
        "tokens": "7",
    }
    assert fake_redis.hget(keys.stats("unknown"), "generations") == "1"
    # Time to first token only for the generation that had one
    assert fake_redis.lrange(f"{keys.stats('echo')}:ttft_ms", 0, -1) == ["250.0"]
    assert fake_redis.llen(f"{keys.stats('echo')}:tokens_per_s") == 1


def test_analytics_keeps_only_the_latest_samples(fake_redis: fakeredis.FakeRedis) -> None:
    analytics = AnalyticsProcessor(fake_redis, ttft_samples=3)
    for n in range(5):
        gen = _analytics_gen(completion_tokens=1, first_token_at=100.0 + n / 10)
        analytics.finish(gen, Event(id=f"9-{n}", type="done", data={}))
        if n == 1:
            analytics.flush()
    analytics.flush()
    assert fake_redis.lrange(f"{keys.stats('echo')}:ttft_ms", 0, -1) == ["400.0", "300.0", "200.0"]
    assert fake_redis.llen(f"{keys.stats('echo')}:tokens_per_s") == 3


def test_processor_seconds_scrape_as_a_histogram_with_cumulative_buckets() -> None:
    # Given a processor that took 20 µs, 0.2 ms and 2 s on three events
    timings = PROCESSOR_SECONDS.labels("scrape-test")
    for seconds in (0.00002, 0.0002, 2.0):
        timings.observe(seconds)

    # When Prometheus scrapes the consumer
    def sample(suffix: str, **labels: str) -> float | None:
        return REGISTRY.get_sample_value(
            f"tokenbridge_processor_seconds{suffix}", {"processor": "scrape-test", **labels}
        )

    # Then the buckets count every event at or under their bound, +Inf all of them, with their count and sum
    assert [sample("_bucket", le=le) for le in ("1e-05", "5e-05", "0.0005", "0.1", "+Inf")] == [0, 1, 2, 2, 3]
    assert sample("_count") == 3 and sample("_sum") == pytest.approx(2.00022)
    # And the exposition is a histogram's
    assert "# TYPE tokenbridge_processor_seconds histogram" in generate_latest(REGISTRY).decode()

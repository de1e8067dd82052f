"""The producer pump: coalescing, terminal entries, cancellation and fencing (no Redis: a recording writer)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
import redis

from bridge import scripts
from bridge.errors import ProviderError
from bridge.producer import Chunk, Finish, GenerationWriter, Outcome, Scheduled, with_retries
from bridge.write_loop import WriteLoop


class RecordingWriter(GenerationWriter):
    """A writer whose writes go to a recording stand-in for Redis instead (``send``): each reply is the next of
    ``results`` (written when there are none left)."""

    def __init__(self, results: list[Outcome | Exception] | None = None, retry_s: float = 0) -> None:
        super().__init__(None, "gen_test", lease_ms=10_000, max_length=1000, retry_s=retry_s)  # type: ignore[arg-type]
        self.attempt = 1
        self.writes: list[list[tuple[str, dict[str, Any]]]] = []
        self.heartbeats = 0
        self.results = results or []
        self.released = False

    def send(self, calls: list[scripts.Call]) -> list[Any]:
        replies = []
        for call in calls:
            entries = [(call.args[i], orjson.loads(call.args[i + 1])) for i in range(5, len(call.args), 2)]
            if entries:
                self.writes.append(entries)
            else:
                self.heartbeats += 1
            result = self.results.pop(0) if self.results else Outcome.WRITTEN
            if isinstance(result, Exception):  # Redis did not answer: nothing was written
                if entries:
                    self.writes.pop()
                replies.append(result)
                continue
            replies.append(_REPLIES[result])
        return replies

    def release(self) -> None:
        self.released = True


# What WRITE would answer for each outcome a test scripts.
_REPLIES = {
    Outcome.WRITTEN: scripts.Status.WRITTEN.value,
    Outcome.FENCED: scripts.Status.FENCED.value,
    Outcome.CANCELLED: scripts.Status.CANCELLED.value,
}


def pump(writer: RecordingWriter, source: Any, **options: Any) -> Outcome:
    return WriteLoop(None, send=writer.send).run(writer, source, **options)


def _burst(n: int) -> Any:
    def source(stop: threading.Event) -> Iterator[Chunk]:
        for i in range(n):
            yield f"t{i} "
        yield Finish("stop", {"prompt_tokens": 3})

    return source


def test_tokens_that_arrive_together_are_written_in_one_round_trip() -> None:
    writer = RecordingWriter()
    assert pump(writer, _burst(200), flush_window_s=0.05) is Outcome.FINISHED
    entries = [e for batch in writer.writes for e in batch]
    assert [e[1]["content"] for e in entries[:-1]] == [f"t{i} " for i in range(200)]
    assert entries[-1] == ("done", {"finish_reason": "stop", "usage": {"prompt_tokens": 3, "completion_tokens": 200}})
    assert len(writer.writes) <= 3


def test_tokens_slower_than_the_window_are_written_one_by_one() -> None:
    def slow(stop: threading.Event) -> Iterator[Chunk]:
        for i in range(4):
            stop.wait(0.03)
            yield str(i)

    writer = RecordingWriter()
    pump(writer, slow, flush_window_s=0.001)
    # The last token and the end of the source arrive together and share a write.
    assert [len(batch) for batch in writer.writes] == [1, 1, 1, 2]


def test_each_token_is_stamped_with_the_time_it_was_produced() -> None:
    writer = RecordingWriter()
    before = time.time()
    pump(writer, _burst(3), flush_window_s=0)
    stamps = [e[1]["ts"] for batch in writer.writes for e in batch if e[0] == "token"]
    assert all(before <= ts <= time.time() for ts in stamps)
    assert stamps == sorted(stamps)


def test_a_provider_error_becomes_one_error_entry_with_its_code() -> None:
    def failing(stop: threading.Event) -> Iterator[Chunk]:
        yield "partial "
        raise ProviderError("upstream closed the stream", code="upstream_closed")

    writer = RecordingWriter()
    assert pump(writer, failing, flush_window_s=0.01) is Outcome.FINISHED
    last = writer.writes[-1][-1]
    assert last == ("error", {"code": "upstream_closed", "message": "upstream closed the stream"})
    assert sum(1 for batch in writer.writes for e in batch if e[0] in ("done", "error")) == 1


def test_cancellation_seen_at_a_heartbeat_stops_the_source() -> None:
    stopped = threading.Event()

    def endless(stop: threading.Event) -> Iterator[Chunk]:
        while not stop.wait(10):
            yield "never"
        stopped.set()

    writer = RecordingWriter(results=[Outcome.CANCELLED])
    started = time.monotonic()
    assert pump(writer, endless, poll_s=0.05) is Outcome.CANCELLED
    assert time.monotonic() - started < 1
    assert stopped.wait(1)


def test_a_fenced_attempt_stops_writing() -> None:
    writer = RecordingWriter(results=[Outcome.FENCED])
    assert pump(writer, _burst(1000), flush_window_s=0) is Outcome.FENCED
    assert len(writer.writes) == 1


def test_a_provider_failing_before_its_first_token_is_retried_with_backoff() -> None:
    calls: list[float] = []

    def flaky(stop: threading.Event) -> Iterator[Chunk]:
        calls.append(time.monotonic())
        if len(calls) < 3:
            raise ProviderError("connection refused", retryable=True)
        yield "finally "
        yield Finish()

    writer = RecordingWriter()
    source = with_retries(flaky, retries=3, base_delay_s=0.05, generation_id="g")
    assert pump(writer, source, flush_window_s=0) is Outcome.FINISHED
    assert len(calls) == 3
    assert calls[2] - calls[1] > calls[1] - calls[0] > 0.03  # backoff grows
    assert [e[0] for batch in writer.writes for e in batch] == ["token", "done"]


def test_retries_are_bounded_and_errors_after_a_token_are_not_retried() -> None:
    def always_down(stop: threading.Event) -> Iterator[Chunk]:
        raise ProviderError("down", code="provider_unavailable", retryable=True)
        yield "never"

    writer = RecordingWriter()
    pump(writer, with_retries(always_down, retries=2, base_delay_s=0.01, generation_id="g"), flush_window_s=0)
    assert writer.writes[-1] == [("error", {"code": "provider_unavailable", "message": "down"})]

    attempts: list[int] = []

    def breaks_midway(stop: threading.Event) -> Iterator[Chunk]:
        attempts.append(1)
        yield "one "
        raise ProviderError("reset by peer", retryable=True)

    writer = RecordingWriter()
    pump(writer, with_retries(breaks_midway, retries=5, base_delay_s=0.01, generation_id="g"), flush_window_s=0)
    assert len(attempts) == 1
    assert writer.writes[-1][-1][0] == "error"


def test_a_silent_provider_hits_the_idle_timeout() -> None:
    def silent(stop: threading.Event) -> Iterator[Chunk]:
        yield "hello "
        stop.wait(30)
        yield "too late"

    writer = RecordingWriter()
    started = time.monotonic()
    assert pump(writer, silent, flush_window_s=0, poll_s=0.02, idle_timeout_s=0.2) is Outcome.FINISHED
    assert time.monotonic() - started < 2
    assert writer.writes[-1][-1][1]["code"] == "provider_timeout"


def test_every_generation_has_a_maximum_duration() -> None:
    def chatty(stop: threading.Event) -> Iterator[Chunk]:
        while not stop.wait(0.01):
            yield "more "

    writer = RecordingWriter()
    assert pump(writer, chatty, flush_window_s=0, poll_s=0.02, idle_timeout_s=5, max_duration_s=0.3) is Outcome.FINISHED
    message = "The generation ran longer than 0.3 s."
    assert writer.writes[-1] == [("error", {"code": "max_duration", "message": message})]


def test_an_interrupted_pump_releases_the_lease() -> None:
    class Interrupted(BaseException):
        pass

    class FailingWriter(RecordingWriter):
        def send(self, calls: list[scripts.Call]) -> list[Any]:
            raise Interrupted()

    writer = FailingWriter()
    with pytest.raises(redis.ConnectionError, match="write loop stopped"):
        pump(writer, _burst(3), flush_window_s=0)
    assert writer.released


def test_a_scheduled_answer_is_written_on_time_by_the_loop_itself() -> None:
    # Given an answer of three tokens due 30 ms apart, and its end
    chunks = [(0.0, "a "), (0.03, "b "), (0.06, "c"), (0.06, Finish("stop", {"prompt_tokens": 1}))]
    writer = RecordingWriter()
    threads_before = {t.name for t in threading.enumerate()}
    started = time.time()
    # When the loop runs it
    assert pump(writer, Scheduled(iter(chunks)), poll_s=0.5) is Outcome.FINISHED
    # Then every token was written once, in order, each no earlier than it was due, then the end
    entries = [e for batch in writer.writes for e in batch]
    assert [e[1].get("content") for e in entries[:-1]] == ["a ", "b ", "c"]
    assert entries[-1][0] == "done" and entries[-1][1]["usage"]["completion_tokens"] == 3
    stamps = [e[1]["ts"] - started for e in entries[:-1]]
    assert stamps == sorted(stamps) and stamps[1] >= 0.029 and stamps[2] >= 0.059
    # And no thread of its own produced it
    assert not any(t.name.startswith("source-") for t in threading.enumerate() if t.name not in threads_before)


def test_a_cancelled_scheduled_answer_produces_nothing_more() -> None:
    writer = RecordingWriter(results=[Outcome.WRITTEN, Outcome.CANCELLED])
    chunks = ((i * 0.01, f"t{i} ") for i in range(1000))
    started = time.monotonic()
    assert pump(writer, Scheduled(chunks), poll_s=0.5) is Outcome.CANCELLED
    assert time.monotonic() - started < 1 and len(writer.writes) == 2


def test_tokens_that_come_while_a_write_waits_to_be_retried_do_not_strand_it() -> None:
    # Given a Redis that does not answer the first write, and an answer whose next tokens come during the backoff
    chunks = [(0.0, "a "), (0.01, "b "), (0.02, "c"), (0.03, Finish("stop", {"prompt_tokens": 1}))]
    writer = RecordingWriter(results=[redis.ConnectionError("down")], retry_s=5)
    outcome: list[Outcome] = []
    # When the loop runs it
    runner = threading.Thread(
        target=lambda: outcome.append(pump(writer, Scheduled(iter(chunks)), poll_s=5)), daemon=True
    )
    runner.start()
    runner.join(3)
    # Then the write is sent again once its backoff is over, and the answer ends whole, in order
    assert outcome == [Outcome.FINISHED], "the generation stalled: its write was never sent again"
    entries = [e for batch in writer.writes for e in batch]
    assert [e[1].get("content") for e in entries[:-1]] == ["a ", "b ", "c"]


def test_an_outage_is_logged_as_it_starts_and_once_when_redis_answers_again(caplog: pytest.LogCaptureFixture) -> None:
    # Given a Redis that does not answer three writes in a row
    down = [redis.ConnectionError("down")] * 3
    writer = RecordingWriter(results=list(down), retry_s=5)
    # When the loop writes an answer through it
    with caplog.at_level("INFO", logger="bridge.producer"):
        assert pump(writer, _burst(3)) is Outcome.FINISHED
    # Then each failed try was logged with its growing wait, and Redis answering again once, with the tries
    lines = [r.getMessage() for r in caplog.records if r.name == "bridge.producer"]
    assert [line.split(";")[1] for line in lines if "unavailable" in line] == [
        " retrying in 0.05s.",
        " retrying in 0.1s.",
        " retrying in 0.2s, then as often until it answers.",
    ]
    answered = [line for line in lines if "answers again" in line]
    assert len(answered) == 1 and answered[0].endswith("(3 tries).")
    assert all(r.generation_id == "gen_test" for r in caplog.records if r.name == "bridge.producer")

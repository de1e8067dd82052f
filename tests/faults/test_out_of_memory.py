"""Redis at ``maxmemory`` with ``noeviction``, on the real stack: submissions get 503 while running
generations finish (headroom), a generation whose write Redis refuses ends with ``redis_out_of_memory``
and nothing half-written, and everything recovers once memory is freed."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
import redis

from tests.support.reader import ResumingReader
from tests.support.stack import Stack

pytestmark = [pytest.mark.slow, pytest.mark.faults]

WORDS = " ".join(f"word{i}" for i in range(60))
FILLER = "llm:test:filler"


def _wait(condition: Callable[[], object], timeout_s: float, what: str) -> float:
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout_s:
            raise AssertionError(f"{what} not met within {timeout_s}s")
        time.sleep(0.1)  # polling the condition
    return time.monotonic() - started


def _fill(client: redis.Redis, fraction: float) -> None:
    """Add 8 MB, then set ``maxmemory`` so that what is used is ``fraction`` of it."""
    client.set(FILLER, "x" * 8 * 1024 * 1024)
    used = int(client.info("memory")["used_memory"])
    client.config_set("maxmemory-policy", "noeviction")
    client.config_set("maxmemory", str(int(used / fraction)))


def _reader(stack: Stack, generation: dict[str, Any]) -> ResumingReader:
    reader = ResumingReader([stack.base_url], generation, stack.headers, timeout_s=60)
    reader.start()
    return reader


def _assert_whole(reader: ResumingReader) -> None:
    """Nothing half-written: every event once, seq contiguous, the text a prefix of the answer."""
    outcome = reader.outcome
    assert outcome.terminal is not None, "stream left hanging"
    assert outcome.duplicates == 0 and outcome.seq_gaps == 0
    assert WORDS.startswith(outcome.text)


def test_redis_out_of_memory_refuses_new_work_ends_running_work_cleanly_and_recovers(
    make_stack: Callable[..., Stack], record: Callable[..., None]
) -> None:
    stack = make_stack(REDIS_MEMORY_HEADROOM="0.9")
    for name in ("web", "worker", "consumer"):
        stack.start(name)
    stack.wait_ready()
    client = stack.client()
    try:
        # Given a Durable Stream created before, to append to later
        assert httpx.put(stack.url("/v1/stream/oom-kept"), headers=stack.headers, timeout=10).status_code == 201
        # Given two generations running, one short and one long
        short = _reader(stack, stack.create(model="echo", prompt=WORDS, options={"delay_ms": 40}))
        long = _reader(stack, stack.create(model="echo", prompt=WORDS, options={"delay_ms": 400}))
        _wait(lambda: len(short.outcome.events) >= 3 and len(long.outcome.events) >= 3, 30, "streams started")

        # When Redis passes the headroom mark (95 % of maxmemory, below the limit itself)
        _fill(client, 0.95)

        # Then submissions get 503 redis_out_of_memory with Retry-After, on every route that creates work
        def refused() -> bool:
            return stack.post("/v1/generations", {"model": "echo", "prompt": "x"}).status_code == 503

        refused_after_s = _wait(refused, 5, "submissions refused")
        answer = stack.post("/v1/generations", {"model": "echo", "prompt": "x"})
        assert answer.json()["error"]["code"] == "redis_out_of_memory" and answer.headers["retry-after"]
        external = stack.post("/v1/generations", {"model": "external", "prompt": "x"})
        assert external.status_code == 503 and external.json()["error"]["code"] == "redis_out_of_memory"
        chat = stack.post("/v1/chat/completions", {"model": "echo", "messages": [{"role": "user", "content": "x"}]})
        assert chat.status_code == 503 and chat.json()["error"]["code"] == "redis_out_of_memory"
        streamed = httpx.put(stack.url("/v1/stream/oom-new"), headers=stack.headers, timeout=10)
        assert streamed.status_code == 503 and streamed.json()["error"]["code"] == "redis_out_of_memory"
        appended = httpx.post(
            stack.url("/v1/stream/oom-kept"),
            content=b"x",
            headers={**stack.headers, "Content-Type": "application/octet-stream"},
            timeout=10,
        )
        assert appended.status_code == 503 and appended.headers["retry-after"]
        # And the generation already running finishes in the room kept for it
        short.join(60)
        assert short.outcome.terminal is not None and short.outcome.terminal.event == "done"
        assert short.outcome.text == WORDS and short.outcome.duplicates == 0 and short.outcome.seq_gaps == 0

        # When Redis is full (used memory above maxmemory): it refuses every write that may grow memory
        full_at = time.monotonic()
        client.config_set("maxmemory", str(int(client.info("memory")["used_memory"]) // 2))
        # Then the long generation ends with the documented error instead of hanging, whole up to it
        long.join(60)
        _assert_whole(long)
        assert long.outcome.terminal is not None
        assert long.outcome.terminal.event == "error", long.outcome.terminal
        assert long.outcome.terminal.data["code"] == "redis_out_of_memory"
        ended_s = round(max(long.outcome.arrivals) - full_at, 2)
        state = stack.get(long.generation["events_url"].removesuffix("/events")).json()
        assert state["status"] == "failed" and state["error"]["code"] == "redis_out_of_memory", state

        # When memory is freed
        client.delete(FILLER)
        client.config_set("maxmemory", "0")
        freed_at = time.monotonic()

        # Then new generations are accepted and complete, with no process restarted
        def accepted() -> bool:
            return stack.post("/v1/generations", {"model": "echo", "prompt": "y"}).status_code == 202

        _wait(accepted, 10, "submissions accepted")
        recovered_s = round(time.monotonic() - freed_at, 2)
        again = _reader(stack, stack.create(model="echo", prompt=WORDS))
        again.join(60)
        assert again.outcome.terminal is not None and again.outcome.terminal.event == "done"
        assert again.outcome.text == WORDS
        assert all(p.poll() is None for p in stack.processes.values())
        long_tokens = sum(1 for e in long.outcome.events if e.event == "token")
        print(
            f"out of memory: refused {refused_after_s:.2f}s after the headroom mark; long generation ended "
            f"{ended_s}s after Redis was full, after {long_tokens} of 60 tokens; recovered {recovered_s}s after"
        )
        record(
            scenario="redis out of memory",
            refused_after_s=round(refused_after_s, 2),
            ended_after_full_s=ended_s,
            tokens_before_error=long_tokens,
            recovered_s=recovered_s,
            lost=0,
            duplicated=0,
        )
    finally:
        try:
            client.config_set("maxmemory", "0")
            client.delete(FILLER)
        except (redis.RedisError, httpx.HTTPError):
            pass
        client.close()

"""Helpers shared by the tests: waiting for a condition, and generations written and read on a real Redis (here);
the stack of Procfile processes, Redis Cluster and Sentinel, SSE and WebSocket readers, scripted servers and model
APIs (the modules of this package)."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import orjson
import redis

from bridge import keys, streams
from bridge.events import Event
from bridge.producer import GenerationWriter
from bridge.settings import Settings
from workers.processors import GenerationState, Processor

# The RabbitMQ the broker tests use when one listens here (they are skipped otherwise).
AMQP_URL = "amqp://guest:guest@127.0.0.1:5672//"

T = TypeVar("T")


def new_generation(r: redis.Redis, settings: Settings, gid: str, *, model: str = "echo", session: str = "s1") -> str:
    streams.ensure_group(r, keys.WORK_STREAM, settings.redis_consumer_group)
    streams.create_generation(
        r,
        generation_id=gid,
        session_id=session,
        model=model,
        request={"model": model, "prompt": "hello world"},
        group=settings.redis_consumer_group,
        retention_ms=settings.redis_stream_retention_ms,
    )
    return gid


def quietly(call: Callable[[], T], *errors: type[BaseException]) -> Callable[[], T | None]:
    """``call`` as a condition of ``wait_for`` that is false (None) while it raises one of ``errors``: a process
    still starting, a connection refused."""

    def attempt() -> T | None:
        try:
            return call()
        except errors:
            return None

    return attempt


def wait_for(
    condition: Callable[[], T],
    *,
    timeout_s: float = 10.0,
    interval_s: float = 0.01,
    step: Callable[[], object] | None = None,
    message: str | None = None,
) -> T:
    """Poll ``condition`` until it returns something true, and return that; fail after ``timeout_s``.

    Between polls it runs ``step`` when given (a test that drives the loop itself), else sleeps ``interval_s``.
    """
    deadline = time.monotonic() + timeout_s
    while not (value := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(message or f"condition not met within {timeout_s}s")
        if step is not None:
            step()
        else:
            time.sleep(interval_s)
    return value


def holds_for(
    condition: Callable[[], object],
    *,
    window_s: float,
    why: str,
    interval_s: float = 0.1,
    step: Callable[[], object] | None = None,
) -> None:
    """Assert that ``condition`` stays true for a whole observation window of ``window_s``, checked every
    ``interval_s`` (and at the end), for a test that asserts something does *not* happen: ``why`` says what the
    window covers (the interval at which the thing would happen). Fails at the first check that is false.

    Between checks it runs ``step`` when given (a browser test lets the page run: ``page.wait_for_timeout``)."""
    deadline = time.monotonic() + window_s
    while True:
        if not condition():
            raise AssertionError(f"no longer true after {window_s - (deadline - time.monotonic()):.2f} s: {why}")
        if time.monotonic() >= deadline:
            return
        if step is not None:
            step()
        else:
            time.sleep(min(interval_s, max(0.0, deadline - time.monotonic())))


class Moderation(Processor):
    """A critical processor that cannot handle one particular token."""

    name = "moderation"
    critical = True

    def __init__(self) -> None:
        self.calls = 0

    def process(self, gen: GenerationState, event: Event) -> Event | None:
        if event.data.get("content") == "poison ":
            self.calls += 1
            raise RuntimeError("moderation backend rejected the payload")
        return event


def out_events(r: redis.Redis, gid: str) -> list[tuple[str, dict[str, Any]]]:
    """The ``:out`` stream of ``gid``: (event, data) pairs."""
    entries: list[tuple[str, dict[str, str]]] = r.xrange(keys.gen_out(gid))  # type: ignore[assignment]
    return [(fields["event"], orjson.loads(fields["data"])) for _, fields in entries]


def write_entries(r: redis.Redis, gid: str, words: list[str], *, done: bool = True) -> GenerationWriter:
    """A producer's writes to ``:raw``: one token per word, then ``done`` unless told otherwise."""
    writer = GenerationWriter(r, gid, lease_ms=10_000, max_length=10_000)
    writer.claim()
    entries: list[tuple[str, dict[str, Any]]] = [("token", {"content": w, "ts": 1.0}) for w in words]
    if done:
        entries.append(("done", {"finish_reason": "stop", "usage": {}}))
    writer.write(entries)
    return writer


def status_of(r: redis.Redis, gid: str) -> str | None:
    """The generation's status in ``:meta``."""
    status: str | None = r.hget(keys.gen_meta(gid), "status")  # type: ignore[assignment]
    return status


def rabbitmq_listens() -> bool:
    """True when something accepts connections on RabbitMQ's port here."""
    try:
        with socket.create_connection(("127.0.0.1", 5672), timeout=1):
            return True
    except OSError:
        return False


def run_in_own_loop(coroutine: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run(coroutine)`` in a thread of its own: the browser tests' Playwright keeps an event loop running
    in the main thread for the whole session, where no second one may run."""
    results: list[T] = []
    failure: list[BaseException] = []

    def target() -> None:
        try:
            results.append(asyncio.run(coroutine))
        except BaseException as exc:
            failure.append(exc)

    thread = threading.Thread(target=target, name="own-loop")
    thread.start()
    thread.join()
    if failure:
        raise failure[0]
    return results[0]

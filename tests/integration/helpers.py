"""Helpers shared by the integration tests."""

from __future__ import annotations

import time
from collections.abc import Callable

import redis

from bridge import keys, streams
from bridge.settings import Settings


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


def wait_for(
    condition: Callable[[], object], *, timeout_s: float = 10.0, step: Callable[[], object] | None = None
) -> None:
    """Poll ``condition`` (running ``step`` between polls) until it is true; fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout_s}s")
        if step is not None:
            step()
        else:
            time.sleep(0.01)

"""External producers: an LLM service that is not driven by a Celery task feeds a generation itself.

Over HTTP (``POST /v1/generations/{id}/tokens`` and ``/complete``) or, for a service that shares the
Redis, with this module::

    from bridge.external import open_generation

    with open_generation(client, settings, prompt="Hi") as generation:
        for token in my_model(...):
            generation.write(token)
    # leaving the block completes it (done), an exception fails it (error), readers see either

Each batch carries the index of its first token, so a batch sent again is written once and a batch that
would leave a gap is refused with the index expected.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import orjson
import redis

from bridge import keys, scripts, streams
from bridge.errors import TokenbridgeError
from bridge.events import EventType
from bridge.generation import GenerationRequest, new_generation_id, new_session_id
from bridge.scripts import Status
from bridge.settings import Settings


@dataclass(frozen=True, slots=True)
class AppendResult:
    # APPENDED, DUPLICATE (written before), GAP, FINISHED, UNKNOWN or NOT_EXTERNAL.
    status: Status
    next_index: int


class ExternalProducerError(TokenbridgeError):
    """Raised when an external producer's write is refused (gap, finished or unknown generation)."""


def append_tokens(
    client: redis.Redis, generation_id: str, index: int, tokens: list[str], *, settings: Settings
) -> AppendResult:
    """Append ``tokens`` as positions ``index``, ``index + 1``, …: idempotent, and refused across a gap."""
    status, next_index = scripts.external_append(
        client,
        generation_id,
        index,
        tokens,
        max_length=settings.redis_stream_max_length,
        idle_ms=int(settings.external_idle_timeout_s * 1000),
    )
    return AppendResult(status, next_index)


@dataclass(frozen=True, slots=True)
class StreamAppend:
    """``EXTERNAL_DS_APPEND``'s answer: its status and what follows it (bridge/lua/external_ds_append.lua)."""

    status: Status
    values: list[str]


def append_stream_batch(
    client: redis.Redis,
    generation_id: str,
    tokens: list[str],
    *,
    settings: Settings,
    producer: tuple[str, int, int] | None = None,
) -> StreamAppend:
    """Append ``tokens`` where the generation has come to, once per batch of an idempotent producer (id, epoch,
    sequence; the Durable Streams protocol's): a Durable Streams client writing an external generation."""
    generation_keys = [keys.gen_meta(generation_id), keys.gen_raw(generation_id), keys.gen_lease(generation_id)]
    pid, epoch, seq = producer or ("", 0, 0)
    args: list[Any] = [pid, epoch, seq, settings.redis_stream_max_length, int(settings.external_idle_timeout_s * 1000)]
    args += [repr(time.time()), *tokens]
    status, values = scripts.decode(scripts.run(client, scripts.EXTERNAL_DS_APPEND, generation_keys, args))
    return StreamAppend(status, [str(v) for v in values])


def finish(
    client: redis.Redis,
    generation_id: str,
    *,
    settings: Settings,
    finish_reason: str | None = "stop",
    error: dict[str, str] | None = None,
    usage: dict[str, int] | None = None,
) -> Status:
    """Write the terminal entry (``done``, or ``error`` when ``error`` is given): ``WRITTEN``, ``FINISHED`` or
    ``UNKNOWN``."""
    data: dict[str, Any]
    if error is not None:
        event, data = EventType.ERROR.value, {"code": error["code"], "message": error["message"]}
    else:
        produced: Any = client.hget(keys.gen_meta(generation_id), "ext_next")
        counts = {"prompt_tokens": 0, "completion_tokens": int(produced or 0), **(usage or {})}
        event, data = EventType.DONE.value, {"finish_reason": finish_reason or "stop", "usage": counts}
    return scripts.fail(client, generation_id, event, orjson.dumps(data), max_length=settings.redis_stream_max_length)


class ExternalGeneration:
    """A generation this process feeds: ``write`` tokens, then leave the ``with`` block."""

    def __init__(self, client: redis.Redis, settings: Settings, generation_id: str, session_id: str) -> None:
        self.client = client
        self.settings = settings
        self.id = generation_id
        self.session_id = session_id
        self.index = 0

    def write(self, *tokens: str) -> None:
        """Append tokens (one round trip for all of them)."""
        if not tokens:
            return
        result = append_tokens(self.client, self.id, self.index, list(tokens), settings=self.settings)
        if result.status not in (Status.APPENDED, Status.DUPLICATE):
            raise ExternalProducerError(f"generation {self.id}: write refused ({result.status.value})")
        self.index = result.next_index

    def complete(self, finish_reason: str = "stop", usage: dict[str, int] | None = None) -> None:
        finish(self.client, self.id, settings=self.settings, finish_reason=finish_reason, usage=usage)

    def fail(self, code: str, message: str) -> None:
        finish(self.client, self.id, settings=self.settings, error={"code": code, "message": message})


@contextmanager
def open_generation(
    client: redis.Redis,
    settings: Settings,
    *,
    prompt: str | None = None,
    messages: list[dict[str, str]] | None = None,
    session_id: str | None = None,
    metadata: dict[str, str] | None = None,
) -> Iterator[ExternalGeneration]:
    """Create an ``external`` generation and feed it; readers follow it like any other."""
    request = GenerationRequest.model_validate(
        {"model": "external", "prompt": prompt, "messages": messages, "session_id": session_id, "metadata": metadata}
    )
    generation = ExternalGeneration(client, settings, new_generation_id(), request.session_id or new_session_id())
    streams.create_generation(
        client,
        generation_id=generation.id,
        session_id=generation.session_id,
        model="external",
        request=request.model_dump(mode="json", exclude_none=True),
        group=settings.redis_consumer_group,
        retention_ms=settings.redis_stream_retention_ms,
        work_shards=settings.work_shard_count,
    )
    try:
        yield generation
    except BaseException as exc:
        generation.fail("producer_error", f"The producer failed: {type(exc).__name__}")
        raise
    generation.complete()

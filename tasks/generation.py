"""The generation task: claim an attempt, stream the provider's tokens into ``:raw``, end with one terminal."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from typing import Any

import orjson
import redis
from celery import Task, current_app, shared_task

from bridge import cache as response_cache
from bridge import keys, scripts
from bridge import tracing as bridge_tracing
from bridge.cache import CachedAnswer
from bridge.circuit import FAILURE_CODES, Circuits
from bridge.connections import redis_client
from bridge.constants import GENERATE_TASK
from bridge.errors import UnknownModelError
from bridge.events import EventType
from bridge.generation import GenerationRequest
from bridge.models import ModelSpec, registry_for
from bridge.producer import (
    NOT_STARTED,
    Chunk,
    Finish,
    GenerationWriter,
    Outcome,
    Scheduled,
    TokenSource,
    with_retries,
)
from bridge.scripts import Status
from bridge.settings import Settings
from bridge.write_loop import WriteLoop
from tasks import liveness, metrics, tracing
from tasks.celery_app import settings_of
from tasks.providers import provider_for
from tasks.providers.base import Provider

logger = logging.getLogger(__name__)


@cache
def _settings() -> Settings:
    """The settings the Celery app was made with (read once per process), not a second reading."""
    return settings_of(current_app)


@cache
def _client() -> redis.Redis:
    return redis_client(_settings().redis, max_connections=256)


@cache
def _write_loop() -> WriteLoop:
    """One per worker process: the writes of all its generations go to Redis together."""
    return WriteLoop(_client())


@shared_task(name=GENERATE_TASK, ignore_result=True, acks_late=True, bind=True, max_retries=None)
def generate(self: Task, generation_id: str) -> str:  # type: ignore[type-arg]
    """Run one generation. Returns what happened (an ``Outcome``, for logs and Flower)."""
    tracing.queue_wait(self.request, generation_id)
    outcome = run_generation(_client(), _settings(), generation_id, loop=_write_loop())
    bridge_tracing.annotate(generation_id=generation_id, outcome=outcome)
    if outcome is Outcome.DEFERRED:
        # The model is at its concurrency limit: try again shortly (QUEUE_TIMEOUT_S bounds the wait).
        raise self.retry(countdown=0.5)
    return outcome.value


def run_generation(
    client: redis.Redis, settings: Settings, generation_id: str, *, loop: WriteLoop | None = None
) -> Outcome:
    """Claim an attempt and run it (what happened, for the task's result). Most generations start in one round
    trip: the claim reads the request. A model checked before its claim (an external one, fed by its producer;
    one with a ``concurrency`` limit, whose slot comes first) goes through ``_check_then_run``."""
    writer = _writer(client, settings, generation_id)
    registry = registry_for(settings.models_file)
    claimed = writer.claim(reason="worker_lost", check_first=_checked_first(registry))
    if claimed is Status.CHECK_FIRST:
        return _check_then_run(client, settings, writer, registry, loop)
    if claimed is not Status.CLAIMED:
        return _not_started(generation_id, claimed)
    parsed = _parse(writer, registry)
    if isinstance(parsed, Outcome):
        return parsed
    return _run_attempt(client, settings, writer, parsed, loop)


def _checked_first(registry: dict[str, ModelSpec]) -> tuple[str, ...]:
    return tuple(name for name, spec in registry.items() if spec.provider == "external" or spec.concurrency)


@dataclass(frozen=True, slots=True)
class _Parsed:
    request: GenerationRequest
    raw: dict[str, Any]
    spec: ModelSpec
    provider: Provider


def _parse(writer: GenerationWriter, registry: dict[str, ModelSpec]) -> _Parsed | Outcome:
    """The stored request, its model and provider; a request that cannot run ends with ``invalid_request``."""
    try:
        raw = orjson.loads(writer.request or "{}")
        request = GenerationRequest.model_validate(raw)
        spec = registry.get(request.model)
        if spec is None:
            raise UnknownModelError(f"model {request.model!r} is not configured on this worker")
        if spec.provider == "external":
            return Outcome.SKIPPED_EXTERNAL  # fed over HTTP or by bridge.external, never by a task
        return _Parsed(request, raw, spec, provider_for(spec))
    except (ValueError, UnknownModelError) as exc:
        if writer.attempt > 0 or writer.claim() is Status.CLAIMED:
            logger.error("Generation %s cannot start: %s", writer.generation_id, exc, extra=_log(writer))
            writer.write([(EventType.ERROR.value, {"code": "invalid_request", "message": str(exc)})])
        return Outcome.INVALID


def _check_then_run(
    client: redis.Redis,
    settings: Settings,
    writer: GenerationWriter,
    registry: dict[str, ModelSpec],
    loop: WriteLoop | None,
) -> Outcome:
    """A model that is checked before the claim: not at all for an external one, its slot first for one with a
    ``concurrency`` limit (deferred while the model is full)."""
    parsed = _parse(writer, registry)
    if isinstance(parsed, Outcome):
        return parsed
    generation_id, spec = writer.generation_id, parsed.spec
    slot = keys.model_running(spec.name) if spec.concurrency else None
    if slot is not None and not _take_slot(client, slot, generation_id, spec.concurrency or 0, settings):
        # Celery's retry sends this task again: the consumer need not send a copy of it.
        scripts.mark_sent(client, generation_id)
        return Outcome.DEFERRED
    holds_slot = True
    try:
        claimed = writer.claim(reason="worker_lost")
        if claimed is not Status.CLAIMED:
            # A copy of the task (redelivered, or sent again) refused because an attempt runs: the slot, keyed by
            # generation, is that attempt's, and stays taken until it ends.
            holds_slot = claimed is not Status.HELD
            return _not_started(generation_id, claimed)
        return _run_attempt(client, settings, writer, parsed, loop)
    finally:
        if slot is not None and holds_slot:
            client.zrem(slot, generation_id)


def _not_started(generation_id: str, refusal: Status) -> Outcome:
    logger.info("Generation %s not started: %s.", generation_id, refusal.value, extra={"generation_id": generation_id})
    return NOT_STARTED[refusal]


def _log(writer: GenerationWriter) -> dict[str, object]:
    return {"generation_id": writer.generation_id, "attempt": writer.attempt}


def _run_attempt(
    client: redis.Redis, settings: Settings, writer: GenerationWriter, parsed: _Parsed, loop: WriteLoop | None
) -> Outcome:
    """Stream the model's answer (or the cached one) through the write loop until the attempt ends."""
    spec, generation_id = parsed.spec, writer.generation_id
    logger.info("Generation %s started (model %s).", generation_id, spec.name, extra=_log(writer))
    bridge_tracing.annotate(attempt=writer.attempt, model=spec.name)
    cached = _cached_answer(client, spec, parsed.raw)
    scheduled = parsed.provider.schedule(parsed.request) if cached is None else None
    source: TokenSource | Scheduled
    if cached is not None:
        source = _replay(cached)
    elif scheduled is not None:
        source = scheduled  # produced by the write loop itself: no thread of its own
    else:
        source = _provider_source(settings, spec, parsed.provider, parsed.request, generation_id)
    outcome = (loop or WriteLoop(client)).run(
        writer,
        source,
        flush_window_s=settings.flush_window_ms / 1000,
        poll_s=settings.cancel_poll_ms / 1000,
        idle_timeout_s=settings.provider_idle_timeout_s,
        max_duration_s=settings.generation_max_duration_s,
    )
    logger.info("Generation %s attempt %s %s.", generation_id, writer.attempt, outcome.value, extra=_log(writer))
    _count(spec.name, outcome, writer)
    if cached is None:
        _record_circuit(client, settings, spec.name, outcome, writer.error_code)
    return outcome


def _cached_answer(client: redis.Redis, spec: ModelSpec, request: dict[str, Any]) -> CachedAnswer | None:
    """The answer of the response cache, for a model that opts in (a miss or a cache error: None)."""
    if not spec.cache_ttl_s:
        return None
    try:
        found = response_cache.lookup(client, response_cache.cache_key(spec, request))
    except redis.RedisError as exc:
        logger.warning("Response cache unavailable for model %s: %s", spec.name, exc)
        return None
    metrics.CACHE_LOOKUPS.labels(spec.name, "hit" if found else "miss").inc()
    return found


def _replay(answer: CachedAnswer) -> TokenSource:
    def stream(stop: threading.Event) -> Iterator[Chunk]:
        for token in answer.tokens:
            if stop.is_set():
                return
            yield token
        yield Finish("stop", dict(answer.usage), extra={"cached": True})

    return stream


def _record_circuit(
    client: redis.Redis, settings: Settings, model: str, outcome: Outcome, error_code: str | None
) -> None:
    """Tell the model's circuit breaker how its upstream did (a cancel or a fenced attempt says nothing)."""
    if not settings.circuit_failures or outcome is not Outcome.FINISHED:
        return
    if error_code is not None and error_code not in FAILURE_CODES:
        return  # the upstream answered: a rejected request, a length limit, ...
    circuits = _circuits(client, settings.circuit_failures, settings.circuit_cooldown_s)
    if error_code is None:
        circuits.succeeded(model)  # written with the process's other successes, within a second
        return
    try:
        failures = circuits.record(model, failed=True)
    except redis.RedisError as exc:
        logger.warning("Could not record the outcome for model %s's circuit: %s", model, exc)
        return
    if failures == settings.circuit_failures:
        logger.error(
            "Model %s failed %s times in a row: its circuit is open for %ss.",
            model,
            failures,
            settings.circuit_cooldown_s,
        )


@cache
def _circuits(client: redis.Redis, threshold: int, cooldown_s: float) -> Circuits:
    """The process's circuits: one writer of successes for every generation."""
    return Circuits(client, threshold=threshold, cooldown_s=cooldown_s)


def _writer(client: redis.Redis, settings: Settings, generation_id: str) -> GenerationWriter:
    return GenerationWriter(
        client,
        generation_id,
        lease_ms=settings.lease_ms,
        max_length=settings.redis_stream_max_length,
        retry_s=settings.redis_retry_s,
        worker=liveness.NAME,
    )


def _provider_source(
    settings: Settings, spec: ModelSpec, provider: Provider, request: GenerationRequest, generation_id: str
) -> TokenSource:
    """The provider's token stream, retried with backoff when it fails before its first token."""
    return with_retries(
        bridge_tracing.traced_source(
            lambda stop: provider.stream(request, stop), "tokenbridge.provider", model=spec.name, provider=spec.provider
        ),
        retries=settings.provider_retries,
        base_delay_s=settings.provider_retry_base_ms / 1000,
        generation_id=generation_id,
        on_retry=lambda exc: metrics.PROVIDER_RETRIES.labels(spec.name).inc(),
    )


def _count(model: str, outcome: Outcome, writer: GenerationWriter) -> None:
    """The attempt's metrics: its outcome, the tokens it wrote, the error it ended with."""
    metrics.GENERATIONS.labels(model, outcome.value).inc()
    metrics.TOKENS.labels(model).inc(writer.tokens)
    if writer.error_code:
        metrics.PROVIDER_ERRORS.labels(model, writer.error_code).inc()


def _take_slot(client: redis.Redis, slot: str, generation_id: str, limit: int, settings: Settings) -> bool:
    # A slot outlives a killed worker by at most the generation's maximum duration.
    expire_ms = int((settings.generation_max_duration_s + 60) * 1000)
    return scripts.take_slot(client, slot, generation_id, limit=limit, expire_ms=expire_ms) is scripts.Status.TAKEN


__all__ = ["Outcome", "generate", "run_generation"]

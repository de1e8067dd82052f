"""Submitting a generation: validate, store, enqueue, with Idempotency-Key (shared by /v1 and the OpenAI route)."""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import time
from contextlib import suppress
from dataclasses import dataclass
from typing import Any

import orjson
import redis
from flask import g, request
from pydantic import ValidationError

from app import metrics
from app.errors import ApiError, invalid, out_of_memory
from app.inputs import model_errors, validation_details
from app.services import services
from bridge import budgets, keys, scripts, streams
from bridge.connections import is_cluster
from bridge.events import EventType
from bridge.generation import GenerationRequest, new_generation_id, new_session_id
from bridge.replication import confirm_replicated
from bridge.task_queue import send_generation

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Submitted:
    """A generation just created (or found again through its Idempotency-Key)."""

    payload: dict[str, Any]
    headers: dict[str, str]

    @property
    def generation_id(self) -> str:
        value: str = self.payload["id"]
        return value


def submit_generation(body: dict[str, Any]) -> Submitted:
    """Validate, store and enqueue a generation (an external one is only stored); 4xx/503 as ApiError."""
    s = services()
    req = _validated(body)
    _check_budget()
    _check_memory()
    generation_id = new_generation_id()
    session_id = req.session_id or new_session_id()
    idempotency_key = claim_idempotency_key(body, generation_id, session_id)
    if isinstance(idempotency_key, dict):
        headers = {"Location": f"/v1/generations/{idempotency_key['id']}", "Idempotent-Replayed": "true"}
        return Submitted(idempotency_key, headers)
    running: str | None = None
    try:
        req, fallback_from, running = _store(req, generation_id, session_id)
        if s.models[req.model].provider != "external":
            enqueue(generation_id)
    except Exception:
        if idempotency_key is not None:
            s.redis.delete(idempotency_key)  # nothing was started: the same key may be tried again
        if running is not None:
            s.redis.zrem(running, generation_id)
        raise
    if idempotency_key is not None and s.models[req.model].provider != "external":
        # Its task is on its way: a replay of this request need not send it again (see claim_idempotency_key).
        with suppress(redis.RedisError):
            s.redis.hset(keys.gen_meta(generation_id), "enqueued", 1)
    confirm_replicated(s.redis, s.settings, what=f"Generation {generation_id}")
    metrics.GENERATIONS_CREATED.labels(req.model).inc()
    logger.info(
        "Generation %s created (model %s).",
        generation_id,
        req.model,
        extra={"generation_id": generation_id, "session_id": session_id, "api_key": g.principal.name},
    )
    payload = created(generation_id, session_id, req.model, "queued")
    if fallback_from is not None:
        payload["fallback_from"] = fallback_from
    return Submitted(payload, {"Location": f"/v1/generations/{generation_id}"})


def _validated(body: dict[str, Any]) -> GenerationRequest:
    """The request, or 422 naming every field that is wrong."""
    details = model_errors(body.get("model"), body.get("options"), body.get("max_tokens"))
    try:
        req = GenerationRequest.model_validate(body)
    except ValidationError as exc:
        fields = {d["field"] for d in details}
        details = [d for d in validation_details(exc) if d["field"] not in fields] + details
        raise invalid(details) from None
    if details:
        raise invalid(details)
    return req


def _store(
    req: GenerationRequest, generation_id: str, session_id: str
) -> tuple[GenerationRequest, str | None, str | None]:
    """Check the model's circuit, the session's owner and the key's running cap, and store the generation: the
    request as it runs (on a fallback model while its own is open), the model it fell back from, and the running
    slot taken. One round trip on a single Redis; a step at a time on a cluster (its keys are in several slots)."""
    s = services()
    new = streams.NewGeneration(
        generation_id,
        session_id,
        req.model,
        req.model_dump(mode="json", exclude_none=True),
        api_key=g.principal.name,
        owner=g.principal.owner,
        budget=(g.principal.budget.per_minute, g.principal.budget.per_day),
    )
    if is_cluster(s.redis):
        return _store_step_by_step(req, new)
    cap = _running_cap()
    fallback_from = None
    check = _circuit_checked(req)
    while True:
        result = streams.submit(
            s.redis,
            new,
            group=s.settings.redis_consumer_group,
            retention_ms=s.settings.redis_stream_retention_ms,
            session_ttl_ms=s.settings.session_ttl_ms,
            check_circuit=check,
            running=cap,
            work_shards=s.settings.work_shard_count,
        )
        if result is not streams.Submission.CIRCUIT_OPEN:
            break
        # Rare: the model is open. A fallback, or 503; and its circuit is not checked again.
        req, fallback_from = _past_open_circuit(req)
        new = dataclasses.replace(new, model=req.model, request=req.model_dump(mode="json", exclude_none=True))
        check = False
    if result is streams.Submission.SESSION_TAKEN:
        raise _session_not_found(session_id)
    if result is streams.Submission.TOO_MANY_RUNNING:
        raise _too_many_running()
    return req, fallback_from, cap.key if cap is not None else None


def _store_step_by_step(
    req: GenerationRequest, new: streams.NewGeneration
) -> tuple[GenerationRequest, str | None, str | None]:
    """``_store`` on a cluster: each check in its own round trip, then ``create_generation``."""
    s = services()
    req, fallback_from = _past_open_circuit(req) if _circuit_checked(req) else (req, None)
    if not streams.claim_session(s.redis, new.session_id, g.principal.owner, s.settings.session_ttl_ms):
        raise _session_not_found(new.session_id)
    running = _take_running_slot(new.generation_id)
    try:
        streams.create_generation(
            s.redis,
            generation_id=new.generation_id,
            session_id=new.session_id,
            model=req.model,
            request=req.model_dump(mode="json", exclude_none=True),
            group=s.settings.redis_consumer_group,
            retention_ms=s.settings.redis_stream_retention_ms,
            api_key=new.api_key,
            owner=new.owner,
            budget=new.budget,
            work_shards=s.settings.work_shard_count,
        )
    except Exception:
        if running is not None:
            s.redis.zrem(running, new.generation_id)
        raise
    return req, fallback_from, running


def _circuit_checked(req: GenerationRequest) -> bool:
    s = services()
    return bool(s.settings.circuit_failures) and s.models[req.model].provider != "external"


def _session_not_found(session_id: str) -> ApiError:
    # Another owner's session is answered like one that does not exist (its id reveals nothing).
    return ApiError(404, "not_found", f"No session with id {session_id!r}.")


def _check_memory() -> None:
    """503 while Redis is nearly full, so that the generations already running have room to finish."""
    s = services()
    if s.memory.full():
        raise out_of_memory(s.settings.redis_retry_after_s)


def _check_budget() -> None:
    """429 while the key's token budget for this minute or day is spent."""
    principal = g.principal
    if principal.kind != "api_key" or not principal.budget.limited:
        return
    spent = budgets.usage(services().redis, principal.name, principal.budget)
    window = spent.exceeded
    if window is None:
        return
    limit = principal.budget.per_day if window == "day" else principal.budget.per_minute
    raise ApiError(
        429,
        "token_budget_exceeded",
        f"This API key has used its {limit} tokens for this {window}; retry in {spent.retry_after_s} s.",
        headers={"Retry-After": str(spent.retry_after_s)},
    )


def _past_open_circuit(req: GenerationRequest) -> tuple[GenerationRequest, str | None]:
    """The request as it may run: on its model, on the model's fallback while its circuit is open, or 503."""
    s = services()
    if not s.settings.circuit_failures or s.models[req.model].provider == "external":
        return req, None
    spec = s.models[req.model]
    names = [req.model, spec.fallback] if spec.fallback else [req.model]
    states = s.circuits.states(names)
    state = states[req.model]
    if not state.open:
        return req, None
    fallback = spec.fallback
    if fallback is not None and not states[fallback].open and not model_errors(fallback, req.options, req.max_tokens):
        logger.warning(
            "Model %s is open after %s failures: generation goes to %s.", req.model, state.failures, fallback
        )
        return req.model_copy(update={"model": fallback}), req.model
    retry_after_s = max(1, math.ceil(state.retry_in_s))
    raise ApiError(
        503,
        "model_unavailable",
        f"Model {req.model!r} failed {state.failures} times in a row upstream; it is tried again in {retry_after_s} s.",
        headers={"Retry-After": str(retry_after_s)},
    )


def _running_cap() -> streams.RunningCap | None:
    """The key's cap on generations that have not ended (``MAX_RUNNING_PER_KEY``), or None without one."""
    s = services()
    limit = s.settings.max_running_per_key
    if not limit or g.principal.kind != "api_key":
        return None
    # A slot is released when the generation ends; one whose end was never seen lapses after this long.
    expire_ms = int((s.settings.generation_max_duration_s + s.settings.queue_timeout_s + 60) * 1000)
    return streams.RunningCap(keys.key_running(g.principal.name), limit, expire_ms)


def _too_many_running() -> ApiError:
    limit = services().settings.max_running_per_key
    return ApiError(
        429,
        "too_many_running",
        f"This API key already has {limit} generations running; wait for one to finish.",
        headers={"Retry-After": "1"},
    )


def _take_running_slot(generation_id: str) -> str | None:
    """Count the generation against its API key's cap on running generations; 429 when the cap is reached."""
    cap = _running_cap()
    if cap is None:
        return None
    slot = scripts.take_slot(services().redis, cap.key, generation_id, limit=cap.limit, expire_ms=cap.expire_ms)
    if slot is scripts.Slot.FULL:
        raise _too_many_running()
    return cap.key


def created(generation_id: str, session_id: str, model: str, status: str) -> dict[str, Any]:
    auth = services().auth
    return {
        "id": generation_id,
        "session_id": session_id,
        "status": status,
        "model": model,
        "events_url": f"/v1/generations/{generation_id}/events",
        "ws_url": f"/v1/generations/{generation_id}/ws",
        "stream_token": auth.stream_token(generation_id=generation_id),
        "session_events_url": f"/v1/sessions/{session_id}/events",
        "session_stream_token": auth.stream_token(session_id=session_id),
    }


def claim_idempotency_key(body: dict[str, Any], generation_id: str, session_id: str) -> str | dict[str, Any] | None:
    """Reserve the request's Idempotency-Key for this generation (its Redis key), or the earlier response."""
    value = request.headers.get("Idempotency-Key")
    if value is None:
        return None
    if not 1 <= len(value) <= 255 or not value.isascii() or not value.isprintable():
        raise ApiError(400, "invalid_idempotency_key", "Idempotency-Key must be 1 to 255 printable ASCII characters.")
    s = services()
    fingerprint = hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()
    key = keys.idempotency(g.principal.name, hashlib.sha256(value.encode()).hexdigest())
    record = {"id": generation_id, "session_id": session_id, "model": body.get("model"), "fingerprint": fingerprint}
    record["reserved_at"] = time.time()
    if s.redis.set(key, orjson.dumps(record), nx=True, px=s.settings.idempotency_ttl_s * 1000):
        return key
    stored = s.redis.get(key)
    if stored is None:  # expired between the two calls: treat as new
        s.redis.set(key, orjson.dumps(record), px=s.settings.idempotency_ttl_s * 1000)
        return key
    earlier = orjson.loads(stored)
    if earlier["fingerprint"] != fingerprint:
        raise ApiError(409, "idempotency_key_reused", "This Idempotency-Key was used with a different request body.")
    status, model, attempt, enqueued = s.redis.hmget(
        keys.gen_meta(earlier["id"]), ["status", "model", "attempt", "enqueued"]
    )
    if _in_progress(earlier):
        # The first request may still be storing or sending it (concurrent retries): the same answer for all,
        # once it is stored. Never a 202 for a generation that may never exist (the first request may have died
        # with its reservation): 409 until it is stored, or until the reservation may be taken over.
        status = status or _stored_status(earlier["id"])
        if status is None:
            retry_after_s = max(1, math.ceil(_RESERVATION_GRACE_S - (time.time() - float(earlier["reserved_at"]))))
            raise ApiError(
                409,
                "idempotency_key_in_use",
                "A request with this Idempotency-Key is still being processed; retry after Retry-After seconds.",
                headers={"Retry-After": str(retry_after_s)},
            )
        return created(earlier["id"], earlier["session_id"], earlier["model"], str(status))
    if status is None:
        # The first request reserved the key but its generation was never stored, or has expired: this one
        # takes the key (Redis went away before the key could be released).
        s.redis.set(key, orjson.dumps(record), px=s.settings.idempotency_ttl_s * 1000)
        return key
    external = model not in s.models or s.models[model].provider == "external"
    if status == "queued" and not enqueued and attempt in ("0", None) and not external:
        # The first request stored the generation and then lost Redis before its task was sent (or before it
        # could mark it sent): the error event and the release of this key could not be written either, so
        # nothing would ever start it. Send the task again; a copy of a task that has started is refused by
        # its claim.
        enqueue(earlier["id"])
    return created(earlier["id"], earlier["session_id"], earlier["model"], str(status))


# Longer than a submission can take (its store, the task's send with retries, a replica's WAIT): a reservation
# younger than this may belong to a request still under way, and is never taken over or sent again.
_RESERVATION_GRACE_S = 10.0


# How long a retry waits for the generation of a reservation still in progress to be stored (a store takes
# milliseconds) before it is answered 409 ``idempotency_key_in_use``.
_STORE_WAIT_S = 1.0


def _stored_status(generation_id: str) -> str | None:
    """The status of a generation another request is storing, once it is stored; None if not within _STORE_WAIT_S."""
    s = services()
    deadline = time.monotonic() + _STORE_WAIT_S
    while time.monotonic() < deadline:
        time.sleep(0.02)  # cooperative under gevent
        status = s.redis.hget(keys.gen_meta(generation_id), "status")
        if status is not None:
            return str(status)
    return None


def _in_progress(reservation: dict[str, Any]) -> bool:
    reserved_at = float(reservation.get("reserved_at") or 0)
    return time.time() - reserved_at < _RESERVATION_GRACE_S


def enqueue(generation_id: str) -> None:
    s = services()
    try:
        send_generation(s.celery, generation_id)
    except Exception as exc:
        logger.error("Could not enqueue generation %s: %s", generation_id, exc, extra={"generation_id": generation_id})
        streams.abort(
            s.redis,
            generation_id,
            EventType.ERROR.value,
            {"code": "enqueue_failed", "message": "The task queue is unavailable."},
            max_length=s.settings.redis_stream_max_length,
        )
        raise ApiError(
            503,
            "queue_unavailable",
            "The task queue is unavailable; retry shortly.",
            headers={"Retry-After": str(s.settings.redis_retry_after_s)},
        ) from None

"""Submitting a generation: validate, store, enqueue, with Idempotency-Key (shared by /v1 and the OpenAI route)."""

from __future__ import annotations

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

from app import limits, metrics
from app.errors import ApiError, invalid, out_of_memory
from app.inputs import model_errors, validation_details
from app.schemas import GenerationCreated
from app.services import services
from bridge import capabilities, keys, streams, tracing
from bridge.budgets import Budget
from bridge.connections import is_cluster
from bridge.events import EventType
from bridge.generation import GenerationRequest, new_generation_id, new_session_id, recorded_user
from bridge.replication import confirm_replicated
from bridge.task_queue import prepared_generation_task, send_generation

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Submitted:
    """A generation just created (or found again through its Idempotency-Key)."""

    payload: GenerationCreated
    headers: dict[str, str]

    @property
    def generation_id(self) -> str:
        return self.payload.id


# The header that names what a model's drop_params dropped from the request (docs/API.md).
DROPPED_HEADER = "x-tokenbridge-dropped-params"


@dataclass(frozen=True, slots=True)
class _Accepted:
    """A valid request: as it was sent, and as its model takes it (without what the model's ``drop_params`` drop)."""

    sent: GenerationRequest
    request: GenerationRequest
    dropped: tuple[str, ...] = ()

    @property
    def model(self) -> str:
        return self.request.model


@dataclass(frozen=True, slots=True)
class _Stored:
    """What ``_store`` stored: the request as it runs, the model it fell back from, the running slots it took, and
    whether its task was pushed with it (a broker on the Redis of the streams)."""

    accepted: _Accepted
    fallback_from: str | None
    running: tuple[str, ...]
    enqueued: bool = False


def submit_generation(body: dict[str, Any]) -> Submitted:
    """Validate, store and enqueue a generation (an external one is only stored); 4xx/503 as ApiError."""
    s = services()
    accepted = _validated(body)
    limits.check_budget(recorded_user(accepted.request.user) if accepted.request.user else "")
    _check_memory()
    generation_id = new_generation_id()
    session_id = accepted.request.session_id or new_session_id()
    headers = {DROPPED_HEADER: ", ".join(accepted.dropped)} if accepted.dropped else {}
    idempotency_key = claim_idempotency_key(body, generation_id, session_id)
    if isinstance(idempotency_key, GenerationCreated):
        headers |= {"Location": f"/v1/generations/{idempotency_key.id}", "Idempotent-Replayed": "true"}
        return Submitted(idempotency_key, headers)
    stored: _Stored | None = None
    try:
        stored = _store(accepted, generation_id, session_id)
        if not stored.enqueued and s.models[stored.accepted.model].provider != "external":
            enqueue(generation_id)
    except Exception:
        if idempotency_key is not None:
            s.redis.delete(idempotency_key)  # nothing was started: the same key may be tried again
        for running in stored.running if stored is not None else ():
            s.redis.zrem(running, generation_id)
        raise
    model = stored.accepted.model
    if idempotency_key is not None and s.models[model].provider != "external":
        # Its task is on its way: a replay of this request need not send it again (see claim_idempotency_key).
        with suppress(redis.RedisError):
            s.redis.hset(keys.gen_meta(generation_id), "enqueued", 1)
    confirm_replicated(s.redis, s.settings, what=f"Generation {generation_id}")
    metrics.GENERATIONS_CREATED.labels(model).inc()
    logger.info(
        "Generation %s created (model %s).",
        generation_id,
        model,
        extra={"generation_id": generation_id, "session_id": session_id, "api_key": g.principal.name},
    )
    payload = created(generation_id, session_id, model, "queued", fallback_from=stored.fallback_from)
    if stored.accepted.dropped:
        headers[DROPPED_HEADER] = ", ".join(stored.accepted.dropped)
    return Submitted(payload, {**headers, "Location": f"/v1/generations/{generation_id}"})


def _validated(body: dict[str, Any]) -> _Accepted:
    """The request, or 422 naming every field that is wrong (413 for an inline image too large); then what its model
    takes of it, or 422 naming what it cannot honour."""
    details = model_errors(body.get("model"), body.get("options"), body.get("max_tokens"))
    try:
        req = GenerationRequest.model_validate(body)
    except ValidationError as exc:
        fields = {d["field"] for d in details}
        details = [d for d in validation_details(exc) if d["field"] not in fields] + details
        raise invalid(details) from None
    if details:
        raise invalid(details)
    limits.check_images(req)
    adapted = capabilities.adapt(services().models[req.model], req)
    if adapted.refused:
        raise invalid([problem.detail() for problem in adapted.refused])
    return _Accepted(req, adapted.request, adapted.dropped)


def _new_generation(accepted: _Accepted, generation_id: str, session_id: str) -> streams.NewGeneration:
    req = accepted.request
    user = recorded_user(req.user) if req.user else ""
    user_budget = limits.user_budget() if user else Budget()
    return streams.NewGeneration(
        generation_id,
        session_id,
        req.model,
        req.model_dump(mode="json", exclude_none=True),
        api_key=g.principal.name,
        owner=g.principal.owner,
        budget=(g.principal.budget.per_minute, g.principal.budget.per_day),
        user=user,
        user_budget=(user_budget.per_minute, user_budget.per_day),
        trace=tracing.current_traceparent(),
    )


def _store(accepted: _Accepted, generation_id: str, session_id: str) -> _Stored:
    """Check the model's circuit, the session's owner and the running caps of the key and of its end user, and store
    the generation: the request as it runs (on a fallback model while its own is open), the model it fell back from,
    and the running slots taken. One round trip on a single Redis, the task pushed in it when the broker is that
    Redis; a step at a time on a cluster (its keys are in several slots)."""
    s = services()
    new = _new_generation(accepted, generation_id, session_id)
    if is_cluster(s.redis):
        return _store_step_by_step(accepted, new)
    cap, user_cap = limits.running_cap(), limits.user_running_cap(new.user)
    fallback_from = None
    check = _circuit_checked(accepted.request)
    task = prepared_generation_task(s.celery, generation_id) if s.settings.broker_is_streams_redis else None
    while True:
        runs = s.models[accepted.model].provider != "external"
        result = streams.submit(
            s.redis,
            new,
            group=s.settings.redis_consumer_group,
            retention_ms=s.settings.redis_stream_retention_ms,
            session_ttl_ms=s.settings.session_ttl_ms,
            check_circuit=check,
            running=cap,
            user_running=user_cap,
            work_shards=s.settings.work_shard_count,
            task=task if runs else None,
        )
        if result is not streams.Submission.CIRCUIT_OPEN:
            break
        # Rare: the model is open. A fallback, or 503; and its circuit is not checked again.
        accepted, fallback_from = _past_open_circuit(accepted)
        new = _new_generation(accepted, generation_id, session_id)
        check = False
    if result is streams.Submission.SESSION_TAKEN:
        raise _session_not_found(session_id)
    if result is streams.Submission.TOO_MANY_RUNNING:
        raise limits.too_many_running()
    if result is streams.Submission.USER_TOO_MANY_RUNNING:
        raise limits.user_too_many_running()
    running = tuple(c.key for c in (cap, user_cap) if c is not None)
    return _Stored(accepted, fallback_from, running, enqueued=task is not None and runs)


def _store_step_by_step(accepted: _Accepted, new: streams.NewGeneration) -> _Stored:
    """``_store`` on a cluster: each check in its own round trip, then ``create_generation``."""
    s = services()
    accepted, fallback_from = _past_open_circuit(accepted) if _circuit_checked(accepted.request) else (accepted, None)
    if fallback_from is not None:
        new = _new_generation(accepted, new.generation_id, new.session_id)
    if not streams.claim_session(s.redis, new.session_id, g.principal.owner, s.settings.session_ttl_ms):
        raise _session_not_found(new.session_id)
    running = limits.take_running_slots(new.generation_id, new.user)
    try:
        streams.create_generation(
            s.redis,
            generation_id=new.generation_id,
            session_id=new.session_id,
            model=new.model,
            request=new.request,
            group=s.settings.redis_consumer_group,
            retention_ms=s.settings.redis_stream_retention_ms,
            api_key=new.api_key,
            owner=new.owner,
            budget=new.budget,
            work_shards=s.settings.work_shard_count,
            user=new.user,
            user_budget=new.user_budget,
            trace=new.trace,
        )
    except Exception:
        for key in running:
            s.redis.zrem(key, new.generation_id)
        raise
    return _Stored(accepted, fallback_from, running)


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


def _past_open_circuit(accepted: _Accepted) -> tuple[_Accepted, str | None]:
    """The request as it may run: on its model, on the model's fallback while its circuit is open (when the fallback
    takes the request as it was sent, less what its own drop_params drop), or 503."""
    s = services()
    model = accepted.model
    if not s.settings.circuit_failures or s.models[model].provider == "external":
        return accepted, None
    spec = s.models[model]
    names = [model, spec.fallback] if spec.fallback else [model]
    states = s.circuits.states(names)
    state = states[model]
    if not state.open:
        return accepted, None
    fallback = spec.fallback
    if fallback is not None and not states[fallback].open:
        sent = accepted.sent.model_copy(update={"model": fallback})
        adapted = capabilities.adapt(s.models[fallback], sent)
        if not adapted.refused and not model_errors(fallback, sent.options, sent.max_tokens):
            logger.warning(
                "Model %s is open after %s failures: generation goes to %s.", model, state.failures, fallback
            )
            return _Accepted(sent, adapted.request, adapted.dropped), model
    retry_after_s = max(1, math.ceil(state.retry_in_s))
    raise ApiError(
        503,
        "model_unavailable",
        f"Model {model!r} failed {state.failures} times in a row upstream; it is tried again in {retry_after_s} s.",
        headers={"Retry-After": str(retry_after_s)},
    )


def created(
    generation_id: str, session_id: str, model: str, status: str, *, fallback_from: str | None = None
) -> GenerationCreated:
    auth = services().auth
    return GenerationCreated(
        id=generation_id,
        session_id=session_id,
        status=status,
        model=model,
        events_url=f"/v1/generations/{generation_id}/events",
        ws_url=f"/v1/generations/{generation_id}/ws",
        stream_token=auth.stream_token(generation_id=generation_id),
        session_events_url=f"/v1/sessions/{session_id}/events",
        session_stream_token=auth.stream_token(session_id=session_id),
        fallback_from=fallback_from,
    )


def claim_idempotency_key(body: dict[str, Any], generation_id: str, session_id: str) -> str | GenerationCreated | None:
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

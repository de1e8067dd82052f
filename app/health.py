"""Liveness, readiness and metrics: ``/healthz``, ``/readyz``, ``/metrics``."""

from __future__ import annotations

import time
from typing import Any

import redis
from flask import Blueprint, Response, request
from prometheus_client import CONTENT_TYPE_LATEST

from app.errors import ApiError
from app.metrics import CONSUMERS_ALIVE, MODEL_CIRCUIT_OPEN, REDIS_UP, render
from app.responses import json_response
from app.schemas import Health, Readiness
from app.services import Services, services
from bridge import keys, metrics_relay, streams
from bridge.version import VERSION

bp = Blueprint("health", __name__)


_celery_cache: dict[str, Any] = {"at": 0.0, "result": None}


@bp.get("/healthz")
def healthz() -> Response:
    return json_response(Health(status="ok", version=VERSION))


def _check_redis(s: Services) -> dict[str, Any]:
    started = time.perf_counter()
    s.redis.ping()
    latency_ms = (time.perf_counter() - started) * 1000
    status = "degraded" if latency_ms > s.settings.ready_max_redis_latency_ms else "healthy"
    return {"status": status, "latency_ms": round(latency_ms, 3)}


def _check_consumers(s: Services) -> dict[str, Any]:
    now_ms = int(time.time() * 1000)
    alive_after = now_ms - 3 * s.settings.consumer_heartbeat_ms
    alive = s.redis.zcount(keys.CONSUMERS_ZSET, alive_after, "+inf")
    pending, lag, oldest_s = streams.work_backlog(s.redis, s.settings.redis_consumer_group, s.settings.work_shard_count)
    problems = []
    if not alive:
        problems.append("no consumer worker is alive")
    if lag is not None and lag > s.settings.ready_max_lag:
        problems.append(f"{lag} generations wait for a consumer")
    if oldest_s > s.settings.ready_max_pending_age_s:
        problems.append(f"a generation has been running for {oldest_s:.0f} s")
    return {
        "status": "degraded" if problems else "healthy",
        "alive": alive,
        "pending_generations": pending,
        "lag": lag,
        "oldest_pending_s": round(oldest_s, 3),
        "problems": problems,
    }


def _check_celery(s: Services) -> dict[str, Any]:
    # Pinging workers costs a broadcast round trip: cached for a few seconds.
    now = time.monotonic()
    if _celery_cache["result"] is None or now - _celery_cache["at"] > 5:
        try:
            replies = s.celery.control.ping(timeout=0.5)
            workers = len(replies or [])
            result = {"status": "healthy" if workers else "degraded", "workers": workers}
        except Exception as exc:
            result = {"status": "degraded", "workers": 0, "error": str(exc)}
        _celery_cache.update(at=now, result=result)
    cached: dict[str, Any] = _celery_cache["result"]
    return cached


def _check_models(s: Services) -> dict[str, Any]:
    """Circuit breakers: a model failing upstream (open) degrades readiness; the others are listed closed."""
    names = [name for name, spec in s.models.items() if spec.provider != "external"]
    states = s.circuits.states(names)
    open_models = sorted(name for name, state in states.items() if state.open)
    for name, state in states.items():
        MODEL_CIRCUIT_OPEN.labels(name).set(1 if state.open else 0)
    return {
        "status": "degraded" if open_models else "healthy",
        "models": {name: state.public() for name, state in states.items()},
        "problems": [f"model {name} is failing upstream (circuit open)" for name in open_models],
    }


def _check_hub(s: Services) -> dict[str, Any]:
    return {
        "status": "healthy" if s.hub.healthy else "degraded",
        "watched_keys": s.hub.watched_keys,
        "subscribers": s.hub.subscriber_count,
        "error": None if s.hub.healthy else s.hub.last_error,
    }


def _shows_details(s: Services) -> bool:
    """With ``OPS_TOKEN``, the checks are for its holder (or an admin key); anyone else, a client sending its own
    API key included (``tokenbridge status``), gets the bare status: /readyz never refuses."""
    try:
        s.auth.require_ops(request.headers.get("Authorization"))
    except ApiError:
        return False
    return True


@bp.get("/readyz")
def readyz() -> Response:
    s = services()
    details = _shows_details(s)
    checks: dict[str, Any] = {}
    try:
        checks["redis"] = _check_redis(s)
        checks["consumers"] = _check_consumers(s)
        checks["models"] = _check_models(s)
    except redis.RedisError as exc:
        checks["redis"] = {"status": "unhealthy", "error": str(exc)}
        body = Readiness(status="unhealthy", checks=checks if details else None)
        return json_response(body, 503, {"Retry-After": str(s.settings.redis_retry_after_s)})
    checks["celery"] = _check_celery(s)
    checks["hub"] = _check_hub(s)
    status = "healthy" if all(c["status"] == "healthy" for c in checks.values()) else "degraded"
    return json_response(Readiness(status=status, checks=checks if details else None))


@bp.get("/metrics")
def metrics() -> Response:
    s = services()
    s.auth.require_ops(request.headers.get("Authorization"))
    relayed: dict[str, bytes] = {}
    try:
        s.redis.ping()
        REDIS_UP.set(1)
        _check_models(s)  # sets the circuit gauges
        relayed = _consumer_metrics(s)
    except redis.RedisError:
        REDIS_UP.set(0)
    return Response(render(relayed), mimetype=CONTENT_TYPE_LATEST)


def _consumer_metrics(s: Services) -> dict[str, bytes]:
    """The live consumers' own metrics, as they pushed them (``bridge.metrics_relay``); counts them."""
    names = metrics_relay.live_consumers(
        s.redis, heartbeat_ms=s.settings.consumer_heartbeat_ms, now_ms=int(time.time() * 1000)
    )
    CONSUMERS_ALIVE.set(len(names))
    return metrics_relay.read(s.redis, names)

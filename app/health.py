"""Liveness, readiness and metrics: ``/healthz``, ``/readyz``, ``/metrics``."""

from __future__ import annotations

import time
from typing import Any

import redis
from flask import Blueprint, Response, jsonify
from prometheus_client import CONTENT_TYPE_LATEST, Gauge, generate_latest

from app.services import Services, services
from bridge import keys

bp = Blueprint("health", __name__)

HUB_KEYS = Gauge("tokenbridge_hub_watched_keys", "Stream keys the hub of this web process watches")
HUB_SUBSCRIBERS = Gauge("tokenbridge_hub_subscribers", "Client subscriptions served by the hub of this web process")

_celery_cache: dict[str, Any] = {"at": 0.0, "result": None}


@bp.get("/healthz")
def healthz() -> Response:
    return jsonify({"status": "ok"})


def _check_redis(s: Services) -> dict[str, Any]:
    started = time.perf_counter()
    s.redis.ping()
    return {"status": "healthy", "latency_ms": round((time.perf_counter() - started) * 1000, 3)}


def _check_consumers(s: Services) -> dict[str, Any]:
    now_ms = int(time.time() * 1000)
    alive_after = now_ms - 3 * s.settings.consumer_heartbeat_ms
    alive = s.redis.zcount(keys.CONSUMERS_ZSET, alive_after, "+inf")
    pending = 0
    lag: int | None = None
    try:
        for group in s.redis.xinfo_groups(keys.WORK_STREAM):
            if group.get("name") == s.settings.redis_consumer_group:
                pending = int(group.get("pending", 0))
                lag = group.get("lag")
    except redis.ResponseError:
        pass  # no work stream yet
    status = "healthy" if alive else "degraded"
    return {"status": status, "alive": alive, "pending_generations": pending, "lag": lag}


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


def _check_hub(s: Services) -> dict[str, Any]:
    return {
        "status": "healthy" if s.hub.healthy else "degraded",
        "watched_keys": s.hub.watched_keys,
        "subscribers": s.hub.subscriber_count,
        "error": None if s.hub.healthy else s.hub.last_error,
    }


@bp.get("/readyz")
def readyz() -> tuple[Response, int, dict[str, str]]:
    s = services()
    checks: dict[str, Any] = {}
    try:
        checks["redis"] = _check_redis(s)
        checks["consumers"] = _check_consumers(s)
    except redis.RedisError as exc:
        checks["redis"] = {"status": "unhealthy", "error": str(exc)}
        body = {"status": "unhealthy", "checks": checks}
        return jsonify(body), 503, {"Retry-After": str(s.settings.redis_retry_after_s)}
    checks["celery"] = _check_celery(s)
    checks["hub"] = _check_hub(s)
    status = "healthy" if all(c["status"] == "healthy" for c in checks.values()) else "degraded"
    return jsonify({"status": status, "checks": checks}), 200, {}


@bp.get("/metrics")
def metrics() -> Response:
    s = services()
    HUB_KEYS.set(s.hub.watched_keys)
    HUB_SUBSCRIBERS.set(s.hub.subscriber_count)
    return Response(generate_latest(), mimetype=CONTENT_TYPE_LATEST)

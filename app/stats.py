"""``GET /v1/stats``: per model — generations, tokens, time to first token p50/p95, tokens per second.

The analytics processor of the consumer workers keeps the figures in ``llm:stats:{model}``.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, g, jsonify

from app.inputs import authenticate
from app.services import services
from bridge import budgets, keys

bp = Blueprint("stats", __name__, url_prefix="/v1")
bp.before_request(authenticate)


def _percentile(values: list[float], fraction: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(fraction * len(ordered)))], 3)


@bp.get("/stats")
def stats() -> Response:
    s = services()
    models = sorted(s.models)
    pipe = s.redis.pipeline(transaction=False)
    for model in models:
        key = keys.stats(model)
        pipe.hgetall(key)
        pipe.lrange(f"{key}:ttft_ms", 0, -1)
        pipe.lrange(f"{key}:tokens_per_s", 0, -1)
    results: list[Any] = pipe.execute()
    body: dict[str, Any] = {}
    for index, model in enumerate(models):
        counters, ttft, rates = results[3 * index : 3 * index + 3]
        ttft_ms = [float(v) for v in ttft]
        tokens_per_s = [float(v) for v in rates]
        body[model] = {
            "generations": int(counters.get("generations", 0)),
            "by_status": {k.split(":", 1)[1]: int(v) for k, v in counters.items() if k.startswith("status:")},
            "tokens": int(counters.get("tokens", 0)),
            "ttft_ms": {"p50": _percentile(ttft_ms, 0.5), "p95": _percentile(ttft_ms, 0.95), "samples": len(ttft_ms)},
            "tokens_per_s": {"p50": _percentile(tokens_per_s, 0.5), "p95": _percentile(tokens_per_s, 0.95)},
        }
    result: dict[str, Any] = {"models": body, "readers": s.presence.summary()}
    principal = g.principal
    if principal.kind == "api_key":
        # The calling key's token usage in the current windows (and its budget, null where unlimited).
        result["usage"] = {
            "api_key": principal.name,
            **budgets.usage(s.redis, principal.name, principal.budget).public(),
        }
    return jsonify(result)

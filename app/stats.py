"""``GET /v1/stats``: per model — generations, tokens, time to first token p50/p95, tokens per second.

The analytics processor of the consumer workers keeps the figures in ``llm:stats:{model}``.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, g

from app.inputs import authenticate
from app.responses import json_response
from app.schemas import LatencyPercentiles, ModelStats, Percentiles, ReadersSummary, Stats, TokenUsage
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
    body = {model: _model_stats(*results[3 * index : 3 * index + 3]) for index, model in enumerate(models)}
    usage = None
    principal = g.principal
    if principal.kind == "api_key":
        # The calling key's token usage in the current windows (and its budget, null where unlimited).
        usage = TokenUsage(api_key=principal.name, **budgets.usage(s.redis, principal.name, principal.budget).public())
    return json_response(Stats(models=body, readers=ReadersSummary(**s.presence.summary()), usage=usage))


def _model_stats(counters: dict[str, str], ttft: list[str], rates: list[str]) -> ModelStats:
    ttft_ms = [float(v) for v in ttft]
    tokens_per_s = [float(v) for v in rates]
    return ModelStats(
        generations=int(counters.get("generations", 0)),
        by_status={k.split(":", 1)[1]: int(v) for k, v in counters.items() if k.startswith("status:")},
        tokens=int(counters.get("tokens", 0)),
        ttft_ms=LatencyPercentiles(p50=_percentile(ttft_ms, 0.5), p95=_percentile(ttft_ms, 0.95), samples=len(ttft_ms)),
        tokens_per_s=Percentiles(p50=_percentile(tokens_per_s, 0.5), p95=_percentile(tokens_per_s, 0.95)),
    )

"""Prometheus metrics of a Celery worker, served on WORKER_METRICS_PORT. No generation ids in labels."""

from __future__ import annotations

from prometheus_client import Counter

GENERATIONS = Counter("tokenbridge_task_generations_total", "Generation attempts by outcome", ["model", "outcome"])
TOKENS = Counter("tokenbridge_task_tokens_total", "Tokens written by generation tasks", ["model"])
PROVIDER_ERRORS = Counter("tokenbridge_provider_errors_total", "Provider failures", ["model", "code"])
PROVIDER_RETRIES = Counter(
    "tokenbridge_provider_retries_total", "Provider calls retried before the first token", ["model"]
)
CACHE_LOOKUPS = Counter(
    "tokenbridge_cache_lookups_total", "Response cache lookups of the models that cache, by result", ["model", "result"]
)

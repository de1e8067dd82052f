"""Prometheus metrics of a consumer worker, served on CONSUMER_METRICS_PORT. No generation ids in labels."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

ENTRIES = Counter("tokenbridge_consumer_entries_total", "Raw entries committed to :out (or dropped)")
PROCESSOR_ERRORS = Counter("tokenbridge_processor_errors_total", "Processor failures", ["processor"])
PROCESSOR_SECONDS = Histogram(
    "tokenbridge_processor_seconds",
    "Time a processor spent on one event",
    ["processor"],
    buckets=(0.00001, 0.00005, 0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1),
)
TAKEOVERS = Counter("tokenbridge_consumer_takeovers_total", "Generations taken over from an idle consumer")
REFUSED_COMMITS = Counter(
    "tokenbridge_consumer_refused_commits_total",
    "Batches whose commit was refused: processed from a state another consumer had moved past",
)
DEAD_LETTERS = Counter("tokenbridge_dead_letters_total", "Entries moved to the dead-letter stream")
REQUEUES = Counter("tokenbridge_requeues_total", "New attempts enqueued for generations that lost their worker")
RESENDS = Counter("tokenbridge_task_resends_total", "Tasks sent again for attempts no worker started in time")
FINISHED = Counter("tokenbridge_generations_finished_total", "Generations ended", ["model", "status"])
TTFT = Histogram(
    "tokenbridge_time_to_first_token_seconds",
    "From submission to the first token",
    ["model"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
OWNED = Gauge("tokenbridge_consumer_owned_generations", "Generations this consumer processes now")
PENDING = Gauge("tokenbridge_work_pending", "Generations handed to consumers and not yet finished")
LAG = Gauge("tokenbridge_work_lag", "Generations not yet handed to any consumer (Redis 7+)")
OLDEST_PENDING = Gauge("tokenbridge_work_oldest_pending_seconds", "Age of the oldest generation not yet finished")
KEY_TOKENS = Counter("tokenbridge_key_tokens_total", "Tokens committed for API keys with a token budget", ["api_key"])

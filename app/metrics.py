"""Prometheus metrics of the web processes. Labels are bounded: transport, model, outcome; never ids.

Under gunicorn every worker process writes its samples to ``PROMETHEUS_MULTIPROC_DIR`` (set by
``gunicorn.conf.py``) and ``/metrics`` adds them up, so a scrape sees the whole ``web`` process.
"""

from __future__ import annotations

import bisect
import os
import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, multiprocess
from prometheus_client.registry import REGISTRY

from bridge import metrics_relay

OPEN_STREAMS = Gauge("tokenbridge_open_streams", "Client streams open", ["transport"], multiprocess_mode="livesum")
EVENTS_SENT = Counter("tokenbridge_events_sent_total", "Events written to clients", ["transport"])
RESUMES = Counter("tokenbridge_resumes_total", "Streams opened with a Last-Event-ID", ["transport"])
GENERATIONS_CREATED = Counter("tokenbridge_generations_created_total", "Generations submitted", ["model"])
DELIVERY_LATENCY = Histogram(
    "tokenbridge_delivery_latency_seconds",
    "From the producer's timestamp of a live token to the hub's read of it, once per token (not per client)",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
HUB_KEYS = Gauge("tokenbridge_hub_watched_keys", "Stream keys the hubs watch", multiprocess_mode="livesum")
HUB_SUBSCRIBERS = Gauge("tokenbridge_hub_subscribers", "Client subscriptions of the hubs", multiprocess_mode="livesum")
HUB_RESYNCS = Counter("tokenbridge_hub_resyncs_total", "Clients that fell behind and re-read from Redis")
MODEL_CIRCUIT_OPEN = Gauge(
    "tokenbridge_model_circuit_open",
    "1 while the model's circuit breaker is open (it failed upstream CIRCUIT_FAILURES times in a row)",
    ["model"],
    multiprocess_mode="livemostrecent",
)
REDIS_UP = Gauge(
    "tokenbridge_redis_up", "1 when Redis answered the last scrape's PING", multiprocess_mode="livemostrecent"
)
CONSUMERS_ALIVE = Gauge(
    "tokenbridge_consumers_alive",
    "Consumer workers with a recent heartbeat in llm:consumers, counted at the last scrape",
    multiprocess_mode="livemostrecent",
)


def observe_many(histogram: Histogram, values: list[float]) -> None:
    """``histogram.observe`` for each of ``values``, with one write per bucket touched instead of two per value.

    Under gunicorn every write goes to a shared memory map behind a lock: at one observation per token that
    was a tenth of a web process's CPU. Falls back to plain ``observe`` where the histogram's layout differs.
    """
    bounds = getattr(histogram, "_upper_bounds", None)
    buckets = getattr(histogram, "_buckets", None)
    total = getattr(histogram, "_sum", None)
    if bounds is None or buckets is None or total is None:
        for value in values:
            histogram.observe(value)
        return
    counts = [0] * len(bounds)
    for value in values:
        counts[bisect.bisect_left(bounds, value)] += 1
    for bucket, count in zip(buckets, counts, strict=True):
        if count:
            bucket.inc(count)
    total.inc(sum(values))


class BufferedCount:
    """Adds to a counter at most once per ``interval_s``, and at ``flush``: one stream's events sent."""

    __slots__ = ("_counter", "_flushed_at", "_interval_s", "_pending")

    def __init__(self, counter: Any, *, interval_s: float = 1.0) -> None:
        self._counter = counter
        self._interval_s = interval_s
        self._pending = 0
        self._flushed_at = time.monotonic()

    def add(self, count: int) -> None:
        self._pending += count
        now = time.monotonic()
        if now - self._flushed_at >= self._interval_s:
            self._flushed_at = now
            self.flush()

    def flush(self) -> None:
        if self._pending:
            self._counter.inc(self._pending)
            self._pending = 0


def render(relayed: dict[str, bytes] | None = None) -> bytes:
    """The exposition text: this process's registry, or every worker's under gunicorn; with the samples of the
    consumers' ``relayed`` texts (``bridge.metrics_relay``), labelled by consumer."""
    registry = REGISTRY
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    own = generate_latest(registry)
    return metrics_relay.merge(own, relayed) if relayed else own

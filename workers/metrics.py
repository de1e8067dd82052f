"""Prometheus metrics of a consumer worker, served on CONSUMER_METRICS_PORT and pushed to Redis for ``web``'s
``/metrics`` (``MetricsPublisher``). No generation ids in labels."""

from __future__ import annotations

import contextlib
import logging
import threading
from bisect import bisect_left
from collections.abc import Iterator

import redis
from prometheus_client import REGISTRY, Counter, Gauge, Histogram, generate_latest
from prometheus_client.metrics_core import HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from bridge import metrics_relay

logger = logging.getLogger(__name__)


class Timings:
    """One processor's seconds per event: counts per bucket and their sum. Only the consumer's processing thread adds
    to them, so they take no lock (a ``Histogram`` takes two per observation: some 10 % of the consumer's CPU at 300
    streams); a scrape, from another thread, may see an event in a bucket before it is in the sum."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one: +Inf
        self.total = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect_left(self.bounds, seconds)] += 1  # the first bucket whose bound is >= seconds (le)
        self.total += seconds


class TimingsHistogram(Collector):
    """A histogram with one label, exposed like a ``Histogram`` and fed by ``Timings`` (one per label value)."""

    def __init__(self, name: str, documentation: str, label: str, buckets: tuple[float, ...]) -> None:
        self.name, self.documentation, self.label, self.buckets = name, documentation, label, buckets
        self._children: dict[str, Timings] = {}

    def labels(self, value: str) -> Timings:
        return self._children.setdefault(value, Timings(self.buckets))

    def describe(self) -> list[Metric]:
        return [HistogramMetricFamily(self.name, self.documentation, labels=[self.label])]

    def collect(self) -> Iterator[Metric]:
        family = HistogramMetricFamily(self.name, self.documentation, labels=[self.label])
        bounds = [floatToGoString(bound) for bound in self.buckets] + ["+Inf"]  # type: ignore[no-untyped-call]
        for value, timings in list(self._children.items()):
            cumulative, buckets = 0, []
            for bound, count in zip(bounds, list(timings.counts), strict=True):
                cumulative += count
                buckets.append((bound, cumulative))
            family.add_metric([value], buckets, sum_value=timings.total)
        yield family


ENTRIES = Counter("tokenbridge_consumer_entries_total", "Raw entries committed to :out (or dropped)")
PROCESSOR_ERRORS = Counter("tokenbridge_processor_errors_total", "Processor failures", ["processor"])
PROCESSOR_SECONDS = TimingsHistogram(
    "tokenbridge_processor_seconds",
    "Time a processor spent on one event",
    "processor",
    buckets=(0.00001, 0.00005, 0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1),
)
REGISTRY.register(PROCESSOR_SECONDS)
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


class MetricsPublisher:
    """Pushes this consumer's exposition text to Redis every ``metrics_relay.PUSH_INTERVAL_S``, from a thread of
    its own (never the processing loop), so that scraping ``web`` alone covers the consumers."""

    def __init__(self, client: redis.Redis, consumer_name: str, *, interval_s: float = metrics_relay.PUSH_INTERVAL_S):
        self.client = client
        self.consumer_name = consumer_name
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tokenbridge-metrics-push", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while True:
            self.publish()
            if self._stop.wait(self.interval_s):
                return

    def publish(self) -> None:
        try:
            metrics_relay.publish(self.client, self.consumer_name, generate_latest(REGISTRY))
        except redis.RedisError as exc:
            logger.warning("Could not push the consumer's metrics: %s", exc)

    def close(self) -> None:
        """Stop pushing and withdraw this consumer's text (a clean stop)."""
        self._stop.set()
        with contextlib.suppress(redis.RedisError):
            metrics_relay.withdraw(self.client, self.consumer_name)

"""Metrics written in batches on the hot path: the same figures as one write per event."""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Histogram

from app.metrics import BufferedCount, observe_many

BUCKETS = (0.001, 0.01, 0.1, 1)


def _histogram(registry: CollectorRegistry) -> Histogram:
    return Histogram("latency_seconds", "test", buckets=BUCKETS, registry=registry)


def test_observing_many_values_at_once_gives_the_same_histogram_as_one_at_a_time() -> None:
    values = [0.0005, 0.001, 0.002, 0.05, 0.1, 0.5, 3.0, 0.0, 0.01]
    one_by_one, together = CollectorRegistry(), CollectorRegistry()
    single = _histogram(one_by_one)
    for value in values:
        single.observe(value)
    observe_many(_histogram(together), values)
    for le in ("0.001", "0.01", "0.1", "1.0", "+Inf"):
        labels = {"le": le}
        assert together.get_sample_value("latency_seconds_bucket", labels) == one_by_one.get_sample_value(
            "latency_seconds_bucket", labels
        ), le
    assert together.get_sample_value("latency_seconds_count") == len(values)
    assert together.get_sample_value("latency_seconds_sum") == sum(values)


def test_a_buffered_count_reaches_the_counter_within_its_interval_and_at_flush() -> None:
    registry = CollectorRegistry()
    counter = Counter("sent", "test", registry=registry)
    buffered = BufferedCount(counter, interval_s=0.05)
    buffered.add(3)
    assert registry.get_sample_value("sent_total") == 0
    time.sleep(0.06)  # a fixed wait, the scenario: the interval (0.05 s) passes, so the next add is due to flush
    buffered.add(2)
    assert registry.get_sample_value("sent_total") == 5
    buffered.add(1)
    buffered.flush()
    assert registry.get_sample_value("sent_total") == 6

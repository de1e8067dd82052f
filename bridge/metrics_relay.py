"""The consumers' metrics, relayed through Redis so that scraping ``web`` alone covers every process type.

Each consumer writes the exposition text of its registry to ``llm:metrics:consumer:{name}`` every
``PUSH_INTERVAL_S``, with an expiry of ``STALE_INTERVALS`` intervals (a periodic push: nothing per token).
``web``'s ``/metrics`` reads those of the consumers alive in ``llm:consumers`` and adds their samples to its
own, each labelled ``consumer="<name>"``, one family per metric name (one ``# HELP`` and ``# TYPE`` each).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from typing import Any

import redis
from prometheus_client import generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from bridge import keys

logger = logging.getLogger(__name__)

PUSH_INTERVAL_S = 5.0
# A consumer's text outlives this many missed pushes, then expires: a stopped consumer drops out of /metrics.
STALE_INTERVALS = 3
# The label that names the consumer on every relayed sample.
CONSUMER_LABEL = "consumer"


def publish(client: redis.Redis, consumer_name: str, exposition: bytes) -> None:
    """Write one consumer's exposition text, with its expiry."""
    ttl_ms = int(PUSH_INTERVAL_S * STALE_INTERVALS * 1000)
    client.set(keys.consumer_metrics(consumer_name), exposition, px=ttl_ms)


def withdraw(client: redis.Redis, consumer_name: str) -> None:
    """Remove a consumer's text at once (a clean stop)."""
    client.delete(keys.consumer_metrics(consumer_name))


def live_consumers(client: redis.Redis, *, heartbeat_ms: int, now_ms: int) -> list[str]:
    """The consumers whose heartbeat in ``llm:consumers`` is within 3 heartbeats (as ``/readyz`` counts them)."""
    names: Any = client.zrangebyscore(keys.CONSUMERS_ZSET, now_ms - 3 * heartbeat_ms, "+inf")
    return [name.decode() if isinstance(name, bytes) else str(name) for name in names]


def read(client: redis.Redis, consumer_names: list[str]) -> dict[str, bytes]:
    """The exposition text of each of ``consumer_names`` that has one (one round trip; one key per consumer)."""
    if not consumer_names:
        return {}
    pipe = client.pipeline(transaction=False)
    for name in consumer_names:
        pipe.get(keys.consumer_metrics(name))
    texts = pipe.execute()
    return {
        name: text.encode() if isinstance(text, str) else text
        for name, text in zip(consumer_names, texts, strict=True)
        if text
    }


class _Families(Collector):
    def __init__(self, families: Iterable[Metric]) -> None:
        self._families = list(families)

    def collect(self) -> Iterator[Metric]:
        return iter(self._families)


def merge(own: bytes, relayed: dict[str, bytes]) -> bytes:
    """The exposition text ``own`` with the samples of each consumer's text added, labelled by consumer.

    Both are parsed alike (a counter's ``_created`` is a family of its own in text), so a family present in both
    keeps one ``# HELP`` and ``# TYPE``. A consumer's text that does not parse, or a family whose type differs
    from the one already there, is left out (and logged).
    """
    families: dict[str, Metric] = {}
    for family in text_string_to_metric_families(own.decode()):
        families[family.name] = _copy(family)
    for consumer, text in sorted(relayed.items()):
        try:
            parsed = list(text_string_to_metric_families(text.decode()))
        except (ValueError, UnicodeDecodeError) as exc:
            logger.warning("The metrics of consumer %s do not parse: %s", consumer, exc)
            continue
        for family in parsed:
            target = families.setdefault(family.name, _copy(family, samples=False))
            if target.type != family.type:
                logger.warning("Metric %s of consumer %s is a %s here.", family.name, consumer, target.type)
                continue
            target.samples.extend(
                sample._replace(labels={**sample.labels, CONSUMER_LABEL: consumer}) for sample in family.samples
            )
    return generate_latest(_Families(families.values()))


def _copy(family: Metric, *, samples: bool = True) -> Metric:
    copy = Metric(family.name, family.documentation, family.type, family.unit)
    if samples:
        copy.samples = list(family.samples)
    return copy

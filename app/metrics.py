"""Prometheus metrics of the web process (a first set; no generation ids in labels)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

OPEN_STREAMS = Gauge("tokenbridge_open_streams", "Client streams open on this web process", ["transport"])
EVENTS_SENT = Counter("tokenbridge_events_sent_total", "Events written to clients", ["transport"])
RESUMES = Counter("tokenbridge_resumes_total", "Streams opened with a Last-Event-ID", ["transport"])
GENERATIONS_CREATED = Counter("tokenbridge_generations_created_total", "Generations submitted", ["model"])

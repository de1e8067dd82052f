"""Tracing of the Celery worker (when ``bridge.tracing`` is configured): Celery's and httpx's instrumentation.

A task's span continues the trace of the POST that sent it (Celery's instrumentation reads the context from the
task's headers); under it, the time the task waited in the queue and each call to the upstream (its time to first
token; the HTTP request is httpx's span).
"""

from __future__ import annotations

import time
from typing import Any

from bridge import tracing
from bridge.task_queue import SENT_AT_HEADER


def instrument() -> bool:
    """Trace the tasks this worker runs and the upstream calls they make; True when tracing is configured."""
    if not tracing.setup("worker"):
        return False
    from opentelemetry.instrumentation.celery import CeleryInstrumentor
    from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor

    celery = CeleryInstrumentor()  # type: ignore[no-untyped-call]
    if not celery.is_instrumented_by_opentelemetry:
        celery.instrument()
    httpx = HTTPXClientInstrumentor()
    if not httpx.is_instrumented_by_opentelemetry:
        httpx.instrument()
    return True


def queue_wait(request: Any, generation_id: str) -> None:
    """A span of the time the running task waited in the queue, from when web sent it (its header) until now."""
    if not tracing.enabled():
        return
    headers = getattr(request, "headers", None) or {}
    sent_at = getattr(request, SENT_AT_HEADER, None) or headers.get(SENT_AT_HEADER)
    if sent_at is None:
        return
    now = time.time()
    span = tracing.start_span("tokenbridge.queue", start_time_s=min(float(sent_at), now), generation_id=generation_id)
    tracing.end(span)

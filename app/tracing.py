"""Tracing of ``web`` (when ``bridge.tracing`` is configured): Flask's and Celery's official instrumentation.

Each request is a server span that continues the caller's ``traceparent``; the task a POST sends carries the
POST's context in its headers (Celery's instrumentation), and the generation's record keeps it for the consumer
and the readers (``bridge.tracing.META_FIELD``). Health checks and scrapes make no spans.
"""

from __future__ import annotations

from flask import Flask

from bridge import tracing

# Requests that make no span: probes, scrapes and static files (a comma-separated list of regular expressions).
UNTRACED = r"healthz,readyz,metrics,/static/,favicon,tokenbridge\.m?js"


def instrument(app: Flask) -> bool:
    """Trace ``app``'s requests and the tasks it sends, when tracing is configured; True when it is."""
    if not tracing.setup("web"):
        return False
    from opentelemetry.instrumentation.celery import CeleryInstrumentor
    from opentelemetry.instrumentation.flask import FlaskInstrumentor

    FlaskInstrumentor().instrument_app(app, excluded_urls=UNTRACED)  # type: ignore[no-untyped-call]
    celery = CeleryInstrumentor()  # type: ignore[no-untyped-call]
    if not celery.is_instrumented_by_opentelemetry:
        celery.instrument()
    return True

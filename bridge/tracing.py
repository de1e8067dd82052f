"""OpenTelemetry tracing: one trace per generation, across web, worker and consumer. Off unless configured.

Tracing is on when the standard OpenTelemetry environment names an exporter: ``OTEL_EXPORTER_OTLP_ENDPOINT`` or
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` (OTLP over HTTP/protobuf), or ``OTEL_TRACES_EXPORTER`` = ``otlp`` /
``console``; ``OTEL_SDK_DISABLED=true`` or ``OTEL_TRACES_EXPORTER=none`` turns it off. Every other ``OTEL_*``
variable (headers, sampler, batch delays, resource attributes) is read by the SDK itself.

Off, nothing of OpenTelemetry is imported and each hook below is one test of a module flag. On, a generation's
trace context is kept in its record (``:meta`` field ``trace``, a W3C ``traceparent``) so that the consumer
that processes it and every reader that receives it add their spans to the trace that the POST began. Spans are
per request, per task, per generation and per reader: never per token.

The instrumentation of Flask and Celery belongs to ``app`` and ``tasks`` (``bridge`` imports neither); this
module starts the SDK and makes the spans that no instrumentation package knows of.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from opentelemetry.trace import Span, Tracer

logger = logging.getLogger(__name__)

T = TypeVar("T")

# The ``:meta`` field that carries a generation's trace context.
META_FIELD = "trace"
# What the spans of this package are named under.
TRACER_NAME = "tokenbridge"

_tracer: Tracer | None = None


def configured(environ: Mapping[str, str] | None = None) -> bool:
    """Whether the environment asks for traces (see the module's docstring)."""
    env = os.environ if environ is None else environ
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporter = env.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporter:
        return exporter != "none"
    return bool(env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))


def enabled() -> bool:
    """Whether this process exports spans (``setup`` ran with tracing configured)."""
    return _tracer is not None


def setup(process: str, environ: Mapping[str, str] | None = None) -> bool:
    """Start exporting this process's spans when the environment asks for it; True when it does.

    The service is ``OTEL_SERVICE_NAME``, or ``tokenbridge-<process>`` (web, worker, consumer); each span's
    resource also names the process (``tokenbridge.process``). Call it once per process, after any fork.
    """
    global _tracer
    env = os.environ if environ is None else environ
    if _tracer is not None or not configured(env):
        return _tracer is not None
    from opentelemetry import trace
    from opentelemetry.sdk.resources import OTELResourceDetector, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter

    resource = Resource.create(
        {"service.name": env.get("OTEL_SERVICE_NAME") or f"tokenbridge-{process}", "tokenbridge.process": process}
    ).merge(OTELResourceDetector().detect())
    provider = TracerProvider(resource=resource)
    exporter: SpanExporter
    if env.get("OTEL_TRACES_EXPORTER", "").strip().lower() == "console":
        exporter = ConsoleSpanExporter()
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter()
    provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    _tracer = provider.get_tracer(TRACER_NAME)
    logger.info("Tracing on: spans of %s are exported (%s).", process, type(exporter).__name__)
    return True


def shutdown() -> None:
    """Export what is left (at a process's exit)."""
    if _tracer is None:
        return
    from opentelemetry import trace

    provider: Any = trace.get_tracer_provider()
    if hasattr(provider, "shutdown"):
        provider.shutdown()


def current_traceparent() -> str:
    """The W3C ``traceparent`` of the current span ('' when tracing is off or no span is current)."""
    if _tracer is None:
        return ""
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    carrier: dict[str, str] = {}
    TraceContextTextMapPropagator().inject(carrier)
    return carrier.get("traceparent", "")


def _context(traceparent: str) -> Any:
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    return TraceContextTextMapPropagator().extract({"traceparent": traceparent})


def start_span(
    name: str, traceparent: str | None = None, *, start_time_s: float | None = None, **attributes: Any
) -> Span | None:
    """A span of the trace ``traceparent`` names (None: a child of the current span), or None when tracing is off
    or there is no trace to join (``traceparent`` '').

    The caller ends it (``end``). ``start_time_s``: a UNIX time in the past, for a span that began earlier.
    """
    if _tracer is None or traceparent == "":
        return None
    start = int(start_time_s * 1e9) if start_time_s is not None else None
    context = _context(traceparent) if traceparent is not None else None
    return _tracer.start_span(name, context=context, start_time=start, attributes=_clean(attributes))


def annotate(**attributes: Any) -> None:
    """Set attributes on the current span (an instrumentation's: the request's, the task's)."""
    if _tracer is None:
        return
    from opentelemetry import trace

    trace.get_current_span().set_attributes(_clean(attributes))


@contextmanager
def span(name: str, **attributes: Any) -> Iterator[Span | None]:
    """A child of the current span while the block runs (nothing when tracing is off)."""
    if _tracer is None:
        yield None
        return
    with _tracer.start_as_current_span(name, attributes=_clean(attributes)) as current:
        yield current


def end(span_: Span | None, **attributes: Any) -> None:
    """End ``span_`` (None: nothing), with these attributes set first."""
    if span_ is None:
        return
    if attributes:
        span_.set_attributes(_clean(attributes))
    span_.end()


def event(span_: Span | None, name: str, **attributes: Any) -> None:
    if span_ is not None:
        span_.add_event(name, attributes=_clean(attributes), timestamp=time.time_ns())


def _clean(attributes: dict[str, Any]) -> dict[str, Any]:
    """Attributes as OpenTelemetry takes them: ``tokenbridge.``-prefixed where not dotted, None dropped."""
    return {(k if "." in k else f"tokenbridge.{k}"): v for k, v in attributes.items() if v is not None}


def traced_source(source: Callable[[Any], Iterator[T]], name: str, **attributes: Any) -> Callable[[Any], Iterator[T]]:
    """``source`` (a token source: called with its stop event, it yields chunks) as a span of the current trace.

    The span runs from the call to the source's end, records the time to its first chunk (an event and the
    attribute ``tokenbridge.time_to_first_token_ms``) and any error; the source may run in another thread, which
    sees the span as current (an upstream HTTP call made there is its child). Off: ``source`` itself.
    """
    if _tracer is None:
        return source
    from opentelemetry import context, trace

    tracer, parent = _tracer, context.get_current()

    def run(stop: Any) -> Iterator[T]:
        current = tracer.start_span(name, context=parent, attributes=_clean(attributes))
        token = context.attach(trace.set_span_in_context(current, parent))
        started, chunks = time.monotonic(), 0
        try:
            for chunk in source(stop):
                if not chunks:
                    current.add_event("first token")
                    current.set_attribute("tokenbridge.time_to_first_token_ms", (time.monotonic() - started) * 1000)
                chunks += 1
                yield chunk
        except GeneratorExit:
            raise  # closed by its reader once it had what it needed: not an error
        except BaseException as exc:
            current.record_exception(exc)
            current.set_status(trace.StatusCode.ERROR, str(exc))
            raise
        finally:
            current.set_attribute("tokenbridge.chunks", chunks)
            with suppress(ValueError):  # ended in another context than it began (a generator closed elsewhere)
                context.detach(token)
            current.end()

    return run

"""Tracing is off unless the standard OpenTelemetry environment names an exporter, and free when off."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from bridge import tracing


@pytest.mark.parametrize(
    ("environ", "on"),
    [
        ({}, False),
        ({"OTEL_SERVICE_NAME": "chat"}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, True),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces"}, True),
        ({"OTEL_TRACES_EXPORTER": "otlp"}, True),
        ({"OTEL_TRACES_EXPORTER": "console"}, True),
        ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, False),
        ({"OTEL_SDK_DISABLED": "true", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, False),
    ],
)
def test_tracing_is_on_only_when_an_exporter_is_named(environ: dict[str, str], on: bool) -> None:
    assert tracing.configured(environ) is on


def test_off_every_hook_does_nothing() -> None:
    # Given a process where tracing was not set up
    assert not tracing.setup("web", {})
    # Then no trace context is made, no span started, and a token source is passed through unchanged
    assert tracing.current_traceparent() == ""
    assert tracing.start_span("tokenbridge.process", "00-" + "1" * 32 + "-" + "2" * 16 + "-01") is None
    with tracing.span("tokenbridge.anything") as span:
        assert span is None

    def source(stop: object) -> Iterator[str]:
        yield "a"

    assert tracing.traced_source(source, "tokenbridge.provider") is source

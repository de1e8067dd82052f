"""OpenTelemetry: one trace per generation across web, worker and consumer, continuing the caller's traceparent.

The Procfile processes export over OTLP/HTTP to a receiver in this test, which decodes what they send with
opentelemetry-proto, as a collector would.
"""

from __future__ import annotations

import gzip
import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from bridge import keys, tracing
from tests.support.fake_upstream import FakeUpstream
from tests.support.procfile import ROOT
from tests.support.stack import Stack, running_stack

pytestmark = pytest.mark.e2e

# 40 words: 40 tokens from the fake upstream, against a handful of spans.
PROMPT = " ".join(f"word{n}" for n in range(40))


@dataclass(frozen=True)
class ReceivedSpan:
    service: str
    name: str
    trace_id: str
    span_id: str
    parent_span_id: str
    attributes: dict[str, object]
    events: tuple[str, ...]


class _Receiver(BaseHTTPRequestHandler):
    server: OtlpReceiver  # type: ignore[assignment]

    def log_message(self, *args: object) -> None:
        pass

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if self.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        if self.path == "/v1/traces":
            self.server.add(ExportTraceServiceRequest.FromString(body))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()


class OtlpReceiver(ThreadingHTTPServer):
    """An OTLP/HTTP (protobuf) trace receiver on a free port, keeping every span it is sent."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Receiver)
        self.spans: list[ReceivedSpan] = []
        self._lock = threading.Lock()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def add(self, request: ExportTraceServiceRequest) -> None:
        received = []
        for resource_spans in request.resource_spans:
            service = next(
                (a.value.string_value for a in resource_spans.resource.attributes if a.key == "service.name"), ""
            )
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    attributes = {a.key: _value(a.value) for a in span.attributes}
                    received.append(
                        ReceivedSpan(
                            service,
                            span.name,
                            span.trace_id.hex(),
                            span.span_id.hex(),
                            span.parent_span_id.hex(),
                            attributes,
                            tuple(e.name for e in span.events),
                        )
                    )
        with self._lock:
            self.spans += received

    def trace(self, trace_id: str) -> list[ReceivedSpan]:
        with self._lock:
            return [s for s in self.spans if s.trace_id == trace_id]

    def wait_for(self, trace_id: str, names: set[str], timeout_s: float = 20) -> list[ReceivedSpan]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            spans = self.trace(trace_id)
            if names <= {s.name for s in spans}:
                return spans
            time.sleep(0.1)  # polling: the processes export their spans in batches
        spans = self.trace(trace_id)
        missing = names - {s.name for s in spans}
        raise AssertionError(f"spans {sorted(missing)} never arrived; got {sorted((s.service, s.name) for s in spans)}")


def _value(value: object) -> object:
    kind = value.WhichOneof("value")  # type: ignore[attr-defined]
    return getattr(value, kind) if kind else None


@pytest.fixture(scope="module")
def receiver() -> Iterator[OtlpReceiver]:
    server = OtlpReceiver()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def traced_stack(
    tmp_path_factory: pytest.TempPathFactory, receiver: OtlpReceiver, upstream: FakeUpstream
) -> Iterator[Stack]:
    models: Path = tmp_path_factory.mktemp("traced-models") / "models.toml"
    models.write_text(
        f"""
[models.fake-gpt]
provider = "openai"
base_url = "{upstream.base_url}"
model = "gpt-upstream"
api_key_env = "FAKE_OPENAI_KEY"
"""
    )
    with running_stack(
        tmp_path_factory.mktemp("traced-redis"),
        ROOT / "test-artifacts" / "e2e-logs-tracing",
        MODELS_FILE=str(models),
        FAKE_OPENAI_KEY="sk-openai-secret",
        OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint,
        OTEL_BSP_SCHEDULE_DELAY="100",
    ) as stack:
        yield stack


def test_one_trace_follows_a_generation_from_the_callers_request_to_its_reader(
    traced_stack: Stack, receiver: OtlpReceiver
) -> None:
    # Given a caller that is inside a trace of its own
    trace_id, caller_span = secrets.token_hex(16), secrets.token_hex(8)
    # When it submits a generation with its traceparent and reads the answer to its end
    response = traced_stack.post(
        "/v1/generations",
        {"model": "fake-gpt", "prompt": PROMPT},
        headers={"traceparent": f"00-{trace_id}-{caller_span}-01"},
    )
    assert response.status_code == 202, response.text
    events = traced_stack.events(response.json()).events
    assert events[-1].event == "done"
    assert sum(e.event == "token" for e in events) == 40

    # Then one trace, the caller's, holds the POST, the task, its queue wait, the upstream call, the consumer's
    # processing and the delivery to the reader, from each of the three processes
    spans = receiver.wait_for(
        trace_id,
        {"tokenbridge.queue", "tokenbridge.provider", "tokenbridge.process", "tokenbridge.deliver"},
    )
    by_name = {s.name: s for s in spans}
    assert {s.service for s in spans} >= {"tokenbridge-web", "tokenbridge-worker", "tokenbridge-consumer"}
    post = next(s for s in spans if s.service == "tokenbridge-web" and s.parent_span_id == caller_span)
    assert "POST" in post.name
    task = next(s for s in spans if s.service == "tokenbridge-worker" and s.name.startswith("run/"))
    assert by_name["tokenbridge.queue"].parent_span_id == task.span_id
    provider = by_name["tokenbridge.provider"]
    assert provider.parent_span_id == task.span_id
    assert provider.events == ("first token",)  # and no error
    assert int(provider.attributes["tokenbridge.chunks"]) >= 40  # type: ignore[call-overload]
    assert float(provider.attributes["tokenbridge.time_to_first_token_ms"]) > 0  # type: ignore[arg-type]
    upstream_call = [s for s in spans if s.service == "tokenbridge-worker" and s.parent_span_id == provider.span_id]
    assert upstream_call, "the HTTP call to the upstream is a child of the provider span"
    assert by_name["tokenbridge.process"].attributes["tokenbridge.end"] == "done"
    deliver = by_name["tokenbridge.deliver"]
    assert deliver.attributes["tokenbridge.events"] == len(events) and deliver.attributes["tokenbridge.end"] == "done"
    # And nothing is traced per token
    assert len(spans) < 20, sorted(s.name for s in spans)


def test_tracing_off_stores_no_trace_context(stack: Stack) -> None:
    # Given the shared stack, which sets no OTEL_* variable
    generation = stack.create(model="echo", prompt="untraced")
    # When its answer is read
    stack.events(generation)
    # Then its record holds no trace context
    assert stack.client().hget(keys.gen_meta(generation["id"]), tracing.META_FIELD) is None

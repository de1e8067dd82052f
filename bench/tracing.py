"""What tracing costs: the same load step on a stack with tracing off and on a stack with it on (exporting every
span over OTLP/HTTP to a local sink that only counts what it receives), run alternately so that a drift of the
machine's speed falls on both."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from statistics import median
from typing import Any

from tests.support.stack import Stack

StartStack = Callable[[str, dict[str, str]], AbstractContextManager[Stack]]
MeasureStep = Callable[[Stack], dict[str, Any]]


class _Handler(BaseHTTPRequestHandler):
    server: _Sink  # type: ignore[assignment]

    def log_message(self, *args: object) -> None:
        pass

    def do_POST(self) -> None:
        size = int(self.headers.get("Content-Length", 0))
        self.rfile.read(size)
        with self.server.lock:
            self.server.requests += 1
            self.server.bytes += size
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()


class _Sink(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.lock = threading.Lock()
        self.requests = 0
        self.bytes = 0


@contextmanager
def otlp_sink() -> Iterator[_Sink]:
    sink = _Sink()
    threading.Thread(target=sink.serve_forever, daemon=True).start()
    try:
        yield sink
    finally:
        sink.shutdown()
        sink.server_close()


def tracing_cost(start: StartStack, measure: MeasureStep, *, rounds: int = 2) -> dict[str, Any]:
    """CPU µs per delivered token per process, tracing off and on (the median of ``rounds`` alternated steps)."""
    with ExitStack() as context:
        sink = context.enter_context(otlp_sink())
        off = context.enter_context(start("bench-tracing-off-logs", {}))
        on = context.enter_context(
            start(
                "bench-tracing-on-logs",
                {"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{sink.server_address[1]}"},
            )
        )
        steps: dict[str, list[dict[str, Any]]] = {"off": [], "on": []}
        for _ in range(rounds):
            steps["off"].append(measure(off))
            steps["on"].append(measure(on))
        delivered = sum(step["delivered"] for step in steps["on"])
        result = {name: _median_cpu(rows) for name, rows in steps.items()}
        return {
            "streams": steps["on"][0]["streams"],
            "rounds": rounds,
            "cpu_us_per_token": result,
            "added_us_per_token": round(result["on"]["pipeline"] - result["off"]["pipeline"], 1),
            "p99_ms": {
                name: round(median(row["latency_ms"]["p99"] for row in rows), 1) for name, rows in steps.items()
            },
            "exported_bytes_per_token": round(sink.bytes / max(1, delivered), 1),
            "exports": sink.requests,
        }


def _median_cpu(rows: list[dict[str, Any]]) -> dict[str, float]:
    names = rows[0]["cpu_us_per_token"].keys()
    return {name: round(median(row["cpu_us_per_token"][name] for row in rows), 1) for name in names}

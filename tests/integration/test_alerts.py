"""The health webhook: one post when the pipeline turns unhealthy, one when it recovers, none in between."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
import redis

from bridge import keys
from bridge.producer import GenerationWriter
from bridge.settings import Settings
from tests.support import holds_for, new_generation, wait_for
from workers.consumer import ConsumerWorker
from workers.processors import default_processors


@pytest.fixture
def webhook() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    received: list[dict[str, Any]] = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_POST(self) -> None:
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(204)
            self.end_headers()

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hook", received
    server.shutdown()
    server.server_close()


def test_the_webhook_hears_once_of_trouble_and_once_of_recovery(
    r: redis.Redis, settings: Settings, webhook: tuple[str, list[dict[str, Any]]]
) -> None:
    url, received = webhook
    settings = settings.model_copy(
        update={"alert_webhook_url": url, "alert_interval_s": 0.01, "ready_max_pending_age_s": 0.3}
    )
    with httpx.Client(timeout=5) as http:
        worker = ConsumerWorker(r, settings, default_processors(r))
        worker.alerter.http = http
        # Given a generation that runs longer than the pipeline allows
        gid = new_generation(r, settings, "gen_slow")
        writer = GenerationWriter(r, gid, lease_ms=10_000, max_length=1000)
        writer.claim()
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:  # many checks while it is unhealthy
            worker.housekeeping()
            worker.run_once(block_ms=20)
        # When it finishes
        writer.write([("done", {"finish_reason": "stop", "usage": {}})])
        wait_for(lambda: r.hget(keys.gen_meta(gid), "status") == "completed", step=lambda: worker.run_once(block_ms=20))

        def check() -> None:
            time.sleep(0.02)  # a health check is due every ALERT_INTERVAL_S (0.01 s)
            worker.housekeeping()

        # Then the next health check posts the recovery, and the checks after it post nothing more
        wait_for(lambda: len(received) >= 2, timeout_s=5, step=check, message="no recovery alert")
        holds_for(
            lambda: len(received) == 2,
            window_s=0.1,
            step=check,
            why="about five health checks after the recovery: a repeated alert would be posted by the next one",
        )
    # And exactly two alerts were posted: trouble, then recovery
    assert [body["status"] for body in received] == ["unhealthy", "healthy"]
    assert "running for" in received[0]["problems"][0]

"""Abuse cases that must fail: rate limits, too many running generations, foreign origins, Flower without auth."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator

import httpx
import pytest

from bridge.embedded import free_port
from tests.support import quietly, wait_for
from tests.support.cluster import cluster_unavailable
from tests.support.procfile import ROOT, procfile_commands
from tests.support.stack import API_KEY, OTHER_KEY, Stack, build_stack

pytestmark = pytest.mark.e2e

THIRD_KEY = "e2e-third"


@pytest.fixture(scope="module", params=["redis", "cluster"])
def strict(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Limits that bite, on one Redis and on a cluster (Flask-Limiter then counts on the cluster)."""
    cluster = request.param == "cluster"
    if cluster and cluster_unavailable():
        pytest.skip(cluster_unavailable() or "")
    stack = build_stack(
        tmp_path_factory.mktemp("strict-redis"),
        ROOT / "test-artifacts" / ("security-logs-cluster" if cluster else "security-logs"),
        cluster=cluster,
        RATE_LIMIT="8/minute",
        MAX_RUNNING_PER_KEY="2",
        CORS_ORIGINS="https://app.example",
        WEB_CONCURRENCY="1",
        API_KEYS=f"{API_KEY},other:{OTHER_KEY},third:{THIRD_KEY}",
    )
    try:
        stack.start("web")
        stack.start("consumer")
        stack.wait_ready(workers=0)
        yield stack
    finally:
        stack.stop_all()
        stack.stop_servers()


def _as(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_too_many_requests_from_one_key_get_429_with_retry_after(strict: Stack) -> None:
    # The limit counts every /v1 route together
    statuses = [strict.get("/v1/generations/gen_nope", headers=_as(OTHER_KEY)).status_code for _ in range(4)]
    statuses += [strict.get("/v1/stats", headers=_as(OTHER_KEY)).status_code for _ in range(4)]
    assert statuses == [404] * 4 + [200] * 4
    limited = strict.get("/v1/generations/gen_nope", headers=_as(OTHER_KEY))
    assert limited.status_code == 429
    assert limited.json()["error"]["code"] == "rate_limited"
    assert int(limited.headers["Retry-After"]) > 0
    # Another key is not affected, nor are health checks
    assert strict.get("/v1/generations/gen_nope", headers=_as(API_KEY)).status_code == 404
    assert strict.get("/healthz").status_code == 200


def test_a_key_cannot_run_more_generations_than_its_cap(strict: Stack) -> None:
    # Given two running (external) generations of one key
    first = strict.create(model="external", prompt="a")
    strict.create(model="external", prompt="b")
    # When it asks for a third
    third = strict.post("/v1/generations", {"model": "external", "prompt": "c"})
    # Then it is told to wait
    assert third.status_code == 429
    assert third.json()["error"]["code"] == "too_many_running" and third.headers["Retry-After"] == "1"
    # And once one ends, it may start another
    strict.post(f"/v1/generations/{first['id']}/complete", {})
    wait_for(
        lambda: strict.post("/v1/generations", {"model": "external", "prompt": "d"}).status_code == 202,
        interval_s=0.1,
        message="the slot was not released",
    )


def test_cors_answers_only_allowed_origins(strict: Stack) -> None:
    preflight = {
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type",
    }
    allowed = httpx.options(strict.url("/v1/generations"), headers={"Origin": "https://app.example", **preflight})
    assert allowed.status_code in (200, 204)
    assert allowed.headers.get("access-control-allow-origin") == "https://app.example"
    refused = httpx.options(strict.url("/v1/generations"), headers={"Origin": "https://evil.example", **preflight})
    assert "access-control-allow-origin" not in refused.headers


def test_a_page_of_an_allowed_origin_reads_a_durable_stream_s_headers(strict: Stack) -> None:
    # Given a finished generation, read by a Durable Streams client on a page of an allowed origin
    gen = strict.post("/v1/generations", {"model": "echo", "prompt": "cors"}, headers=_as(THIRD_KEY)).json()
    path = f"/v1/stream/generations/{gen['id']}"
    preflight = {
        "Access-Control-Request-Method": "GET",
        "Access-Control-Request-Headers": "authorization,if-none-match",
    }
    allowed = httpx.options(strict.url(path), headers={"Origin": "https://app.example", **preflight})
    # Then its preflight lets it send its credentials and If-None-Match
    assert {h.strip() for h in allowed.headers["access-control-allow-headers"].lower().split(",")} >= {
        "authorization",
        "if-none-match",
    }
    # And the answer lets the page read the protocol's headers
    read = httpx.get(
        strict.url(path), params={"offset": "-1"}, headers={"Origin": "https://app.example", **_as(THIRD_KEY)}
    )
    exposed = {h.strip().lower() for h in read.headers["access-control-expose-headers"].split(",")}
    assert {"stream-next-offset", "stream-cursor", "stream-up-to-date", "stream-closed", "etag"} <= exposed


def test_websocket_from_a_foreign_origin_is_refused_before_the_upgrade(strict: Stack) -> None:
    gen = strict.post("/v1/generations", {"model": "external", "prompt": "ws"}, headers=_as(THIRD_KEY)).json()
    upgrade = {
        "Connection": "Upgrade",
        "Upgrade": "websocket",
        "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
        **_as(THIRD_KEY),
    }
    url = strict.url(gen["ws_url"])
    evil = httpx.get(url, headers={**upgrade, "Origin": "https://evil.example"})
    assert evil.status_code == 403 and evil.json()["error"]["code"] == "origin_not_allowed"
    for origin in ("https://app.example", strict.base_url):
        ok = httpx.get(url, headers={**upgrade, "Origin": origin})
        assert ok.status_code == 101


def test_flower_will_not_start_without_basic_auth_and_refuses_anonymous_users(strict: Stack) -> None:
    env = {k: v for k, v in strict.env.items() if k != "FLOWER_BASIC_AUTH"}
    port = free_port()
    env["PORT"] = str(port)
    refused = subprocess.run(
        ["sh", "-c", procfile_commands()["flower"]], env=env, cwd=ROOT, capture_output=True, timeout=60
    )
    assert refused.returncode != 0 and b"FLOWER_BASIC_AUTH" in refused.stderr
    process = subprocess.Popen(
        ["sh", "-c", procfile_commands()["flower"]],
        env={**env, "FLOWER_BASIC_AUTH": "ops:s3cret"},
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        anonymous = wait_for(
            quietly(lambda: httpx.get(f"http://127.0.0.1:{port}/api/workers", timeout=2), httpx.TransportError),
            timeout_s=30,
            interval_s=0.3,
            message="flower did not start",
        )
        assert anonymous.status_code == 401
        assert httpx.get(f"http://127.0.0.1:{port}/", auth=("ops", "s3cret"), timeout=5).status_code == 200
    finally:
        os.killpg(process.pid, 15)
        process.wait(20)

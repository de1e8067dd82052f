"""Every Procfile process on a managed-Redis-like server: TLS with a self-signed certificate
(``rediss://…?ssl_cert_reqs=none``), no plaintext port, and a cap on clients (``maxclients``) that
``REDIS_MAX_CONNECTIONS`` keeps the processes under.

Needs a redis-server built with TLS (Debian's is) and ``openssl`` to make the certificate; skipped otherwise.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import redis

from bridge.embedded import EmbeddedRedis, free_port
from tests.support import quietly, wait_for
from tests.support.procfile import ROOT
from tests.support.reader import ReadOutcome, ResumingReader
from tests.support.stack import Stack, build_stack

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

FLOWER_AUTH = ("ops", "tls-fl0wer")
MAX_CONNECTIONS = 4
# What the plan allows: about the documented count of web (one gunicorn worker), a worker of 50 greenlets,
# consumer and Flower at REDIS_MAX_CONNECTIONS=4 (55 seen), with room. Redis refuses and counts any past it.
MAXCLIENTS = 80


def _tls_redis_server() -> tuple[str | None, str]:
    """A redis-server that accepts ``--tls-port``, or None and why not."""
    if shutil.which("openssl") is None:
        return None, "no openssl to make a certificate"
    candidates = [os.environ.get("TOKENBRIDGE_TEST_REDIS_TLS", ""), "/usr/bin/redis-server"]
    candidates += [os.path.join(d, "redis-server") for d in os.environ.get("PATH", "").split(os.pathsep)]
    for candidate in candidates:
        if not candidate or not os.access(candidate, os.X_OK):
            continue
        # Both stop at once: a build without TLS on the unknown directive, one with TLS on the missing key.
        probe = subprocess.run(
            [candidate, "--port", "0", "--tls-port", "1", "--tls-cert-file", "/nonexistent"],
            capture_output=True,
            text=True,
            timeout=10,
        )
        if "Bad directive" not in probe.stdout + probe.stderr:
            return candidate, ""
    return None, "no redis-server built with TLS (apt-get install redis-server, or set TOKENBRIDGE_TEST_REDIS_TLS)"


def _certificate(directory: Path) -> tuple[Path, Path]:
    cert, key = directory / "cert.pem", directory / "key.pem"
    request = ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=managed-redis"]
    subprocess.run(
        [*request, "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )
    return cert, key


def _serve_tls_only(server: EmbeddedRedis, binary: str, cert: Path, key: Path) -> None:
    """Make ``server`` (stopped) a managed-Redis-like one: TLS only, self-signed, at most MAXCLIENTS clients."""
    server.binary = binary
    server.extra_args = [
        "--port", "0",  # no plaintext
        "--tls-port", str(server.port),
        "--tls-cert-file", str(cert),
        "--tls-key-file", str(key),
        "--tls-ca-cert-file", str(cert),
        "--tls-auth-clients", "no",
        "--maxclients", str(MAXCLIENTS),
    ]  # fmt: skip


@pytest.fixture(scope="module")
def managed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, str, int]]:
    binary, reason = _tls_redis_server()
    if binary is None:
        print(f"skipped: {reason}")
        pytest.skip(reason)
    directory = tmp_path_factory.mktemp("tls-redis")
    cert, key = _certificate(directory)
    stack = build_stack(directory, ROOT / "test-artifacts" / "tls-logs", WEB_CONCURRENCY="1")
    server = stack.redis
    server.stop()
    assert isinstance(server, EmbeddedRedis)
    _serve_tls_only(server, binary, cert, key)
    url = f"rediss://127.0.0.1:{server.port}/0?ssl_cert_reqs=none"
    server.start(timeout_s=10, probe_url=url)
    stack.env.update(REDIS_URL=url, REDIS_MAX_CONNECTIONS=str(MAX_CONNECTIONS), FLOWER_BASIC_AUTH=":".join(FLOWER_AUTH))
    flower_port = free_port()
    try:
        for name in ("web", "worker", "consumer"):
            stack.start(name)
        stack.start("flower", PORT=str(flower_port))
        stack.wait_ready()
        yield stack, url, flower_port
    finally:
        stack.stop_all()
        server.stop()


def test_web_worker_and_consumer_stream_over_tls_with_a_self_signed_certificate(
    managed: tuple[Stack, str, int],
) -> None:
    stack, url, _ = managed
    # Given a Redis that speaks only TLS, with a certificate no client can verify
    with pytest.raises(redis.ConnectionError):
        redis.Redis.from_url(url.partition("?")[0], socket_connect_timeout=2).ping()
    # When a generation is submitted and read
    gen = stack.create(model="echo", prompt="tokens through TLS")
    events = stack.events(gen).events
    # Then every token came through web, worker and consumer
    assert "".join(e.data["content"] for e in events if e.event == "token") == "tokens through TLS"
    assert events[-1].event == "done"


def test_flower_monitors_the_worker_over_tls(managed: tuple[Stack, str, int]) -> None:
    _, _, flower_port = managed
    workers: dict[str, object] = {}

    def worker_listed() -> bool:
        response = httpx.get(
            f"http://127.0.0.1:{flower_port}/api/workers", params={"status": "true"}, auth=FLOWER_AUTH, timeout=10
        )
        workers.clear()
        workers.update(response.json() if response.status_code == 200 else {})
        # Heartbeats of the Celery worker reached Flower through the TLS broker.
        return any(name.startswith("worker-") and alive for name, alive in workers.items())

    wait_for(
        quietly(worker_listed, httpx.HTTPError), timeout_s=30, interval_s=0.5, message="Flower lists no Celery worker"
    )


def test_a_burst_stays_within_the_plans_connection_limit(managed: tuple[Stack, str, int]) -> None:
    stack, url, _ = managed
    client = redis.Redis.from_url(url, decode_responses=True)
    peak = [0]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], int(client.info("clients")["connected_clients"]))
            time.sleep(0.05)  # pacing of the sampler

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()

    def one(i: int) -> ReadOutcome:
        gen = stack.create(model="echo", prompt=f"burst {i} " * 20, options={"delay_ms": 5})
        # Read as the clients do: resume after a dropped connection (one in a few hundred is dropped here
        # before its response under this burst on a 2-core machine; the reader must still get it all once).
        reader = ResumingReader([stack.base_url], gen, stack.headers)
        reader.run()
        return reader.outcome

    # When many more generations run at once than any pool has connections
    try:
        with ThreadPoolExecutor(60) as pool:
            outcomes = list(pool.map(one, range(120)))
    finally:
        stop.set()
        sampler.join(5)
    stats = client.info("stats")
    client.close()
    # Then each one finished, and Redis never had to refuse a connection
    assert [o.terminal.event if o.terminal else None for o in outcomes] == ["done"] * 120
    assert sum(o.duplicates + o.seq_gaps for o in outcomes) == 0
    assert stats["rejected_connections"] == 0, f"peak {peak[0]} clients"
    reconnects = sum(o.reconnects for o in outcomes)
    print(f"peak Redis clients with REDIS_MAX_CONNECTIONS={MAX_CONNECTIONS}: {peak[0]}; reconnects: {reconnects}")


def test_a_broker_on_a_second_tls_redis_takes_redis_ssl_cert_reqs(tmp_path: Path) -> None:
    # Given streams and Celery's broker on two TLS-only Redis with self-signed certificates, as a small plan split
    # in two (docs/deploy.md), and both URLs set by add-ons without ssl_cert_reqs: REDIS_SSL_CERT_REQS=none instead
    binary, reason = _tls_redis_server()
    if binary is None:
        pytest.skip(reason)
    cert, key = _certificate(tmp_path)
    stack = build_stack(tmp_path / "streams", ROOT / "test-artifacts" / "tls-broker-logs", WEB_CONCURRENCY="1")
    broker = EmbeddedRedis(tmp_path / "broker", appendonly=False)
    servers = [stack.redis, broker]
    for server in servers:
        server.stop()
        assert isinstance(server, EmbeddedRedis)
        _serve_tls_only(server, binary, cert, key)
        server.start(timeout_s=10, probe_url=f"rediss://127.0.0.1:{server.port}/0?ssl_cert_reqs=none")
    stack.env.update(
        REDIS_URL=f"rediss://127.0.0.1:{stack.redis.port}/0",
        CELERY_BROKER_URL=f"rediss://127.0.0.1:{broker.port}/0",
        REDIS_SSL_CERT_REQS="none",
        FLOWER_BASIC_AUTH=":".join(FLOWER_AUTH),
    )
    flower_port = free_port()
    try:
        for name in ("web", "worker", "consumer"):
            stack.start(name)
        stack.start("flower", PORT=str(flower_port))
        stack.wait_ready()
        # When a generation is submitted and read
        gen = stack.create(model="echo", prompt="two TLS Redis")
        events = stack.events(gen).events
        # Then it went through the broker to the worker, and Flower's broker view reads the broker over TLS too
        assert "".join(e.data["content"] for e in events if e.event == "token") == "two TLS Redis"
        queues = httpx.get(f"http://127.0.0.1:{flower_port}/api/queues/length", auth=FLOWER_AUTH, timeout=10)
        assert queues.status_code == 200, queues.text
        assert "generations" in {queue["name"] for queue in queues.json()["active_queues"]}
    finally:
        stack.stop_all()
        for server in servers:
            server.stop()

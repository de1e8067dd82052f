"""The whole stack, started the way the Procfile starts it: web (gunicorn gevent), worker (Celery), consumer."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from bridge.embedded import EmbeddedRedis, free_port
from tests.procfile import ROOT, procfile_commands
from tests.sse import SseResult, read_sse

API_KEY = "e2e-key"
OTHER_KEY = "e2e-other"

# Variables of the host environment that must not leak into the processes under test.
_SCRUB = ("REDIS_URL", "REDIS_HOST", "REDIS_PORT", "REDIS_PASSWORD", "REDIS_DB", "CELERY_BROKER_URL", "API_KEYS")


@dataclass
class Stack:
    base_url: str
    redis: EmbeddedRedis
    env: dict[str, str]
    logs: Path
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    _log_files: list[Any] = field(default_factory=list)

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {API_KEY}"}

    def url(self, path: str) -> str:
        return self.base_url + path

    def post(self, path: str, body: Any = None, **kw: Any) -> httpx.Response:
        headers = {**self.headers, **kw.pop("headers", {})}
        return httpx.post(self.url(path), json=body, headers=headers, timeout=10, **kw)

    def get(self, path: str, **kw: Any) -> httpx.Response:
        headers = {**self.headers, **kw.pop("headers", {})}
        return httpx.get(self.url(path), headers=headers, timeout=10, **kw)

    def create(self, **body: Any) -> dict[str, Any]:
        response = self.post("/v1/generations", body)
        assert response.status_code == 202, response.text
        created: dict[str, Any] = response.json()
        return created

    def events(self, generation: dict[str, Any], **kw: Any) -> SseResult:
        headers = {**self.headers, **kw.pop("headers", {})}
        return read_sse(self.url(generation["events_url"]), headers=headers, **kw)

    def start(self, name: str, command: str) -> subprocess.Popen[bytes]:
        log = open(self.logs / f"{name}.log", "ab")  # noqa: SIM115 - closed in stop_all
        self._log_files.append(log)
        process = subprocess.Popen(
            ["sh", "-c", command], env=self.env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        self.processes[name] = process
        return process

    def stop_all(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        for process in self.processes.values():
            try:
                process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        for log in self._log_files:
            log.close()


def _wait_ready(stack: Stack, timeout_s: float = 90) -> None:
    deadline = time.monotonic() + timeout_s
    last = ""
    while time.monotonic() < deadline:
        for name, process in stack.processes.items():
            if process.poll() is not None:
                raise RuntimeError(f"{name} exited with {process.returncode}; see {stack.logs}/{name}.log")
        try:
            response = httpx.get(stack.url("/readyz"), timeout=5)
            body = response.json()
            last = response.text
            checks = body.get("checks", {})
            if checks.get("consumers", {}).get("alive") and checks.get("celery", {}).get("workers"):
                return
        except (httpx.HTTPError, ValueError):
            pass
        time.sleep(0.5)
    raise RuntimeError(f"stack not ready after {timeout_s}s: {last}")


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    logs = ROOT / "test-artifacts" / "e2e-logs"
    logs.mkdir(parents=True, exist_ok=True)
    for old in logs.glob("*.log"):
        old.unlink()
    server = EmbeddedRedis(tmp_path_factory.mktemp("e2e-redis")).start()
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in _SCRUB}
    env.update(
        {
            "REDIS_URL": server.url,
            "API_KEYS": f"{API_KEY},other:{OTHER_KEY}",
            "SECRET_KEY": "e2e-secret",
            "PORT": str(port),
            "WEB_CONCURRENCY": "2",
            "CELERY_CONCURRENCY": "50",
            "LOG_FORMAT": "json",
            "SSE_KEEPALIVE_S": "1",
            "CONSUMER_HEARTBEAT_MS": "200",
            "CONSUMER_CLAIM_IDLE_MS": "2000",
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        }
    )
    stack = Stack(base_url=f"http://127.0.0.1:{port}", redis=server, env=env, logs=logs)
    commands = procfile_commands()
    try:
        for name in ("web", "worker", "consumer"):
            stack.start(name, commands[name])
        _wait_ready(stack)
        yield stack
    finally:
        stack.stop_all()
        server.stop()

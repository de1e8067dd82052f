"""The whole stack, started the way the Procfile starts it: web (gunicorn gevent), worker (Celery), consumer.

End-to-end tests share one stack per session; fault-injection tests build their own and kill parts of it.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import redis

from bridge.embedded import EmbeddedRedis, free_port
from tests.support import quietly, wait_for
from tests.support.cluster import EmbeddedCluster
from tests.support.procfile import ROOT, procfile_commands
from tests.support.sse import SseResult, read_sse

API_KEY = "e2e-key"
OTHER_KEY = "e2e-other"
# API_KEY's name (a bare key is named after its hash): the owner of what it creates.
API_KEY_OWNER = f"key-{hashlib.sha256(API_KEY.encode()).hexdigest()[:10]}"
# Keys of the keys file every stack reads (API_KEYS_FILE): a reader and a producer for API_KEY's owner, an admin.
READER_KEY = "e2e-reader-key-0001"
PRODUCER_KEY = "e2e-producer-key-01"
ADMIN_KEY = "e2e-admin-key-00001"
BUDGET_KEY = "e2e-budget-key-0001"  # may have 10 tokens produced a minute
KEYS_FILE = f"""
[[keys]]
name = "app-reader"
key = "{READER_KEY}"
owner = "{API_KEY_OWNER}"
scope = "reader"

[[keys]]
name = "app-producer"
key_sha256 = "{hashlib.sha256(PRODUCER_KEY.encode()).hexdigest()}"
owner = "{API_KEY_OWNER}"
scope = "producer"

[[keys]]
name = "ops"
key = "{ADMIN_KEY}"
scope = "admin"

[[keys]]
name = "budgeted"
key = "{BUDGET_KEY}"
tokens_per_minute = 10
"""

# Variables of the host environment that must not leak into the processes under test.
_SCRUB = (
    "REDIS_URL",
    "REDIS_HOST",
    "REDIS_PORT",
    "REDIS_PASSWORD",
    "REDIS_DB",
    "CELERY_BROKER_URL",
    "API_KEYS",
    "API_KEYS_FILE",
    "API_KEY_SCOPES",
)


@dataclass
class Stack:
    redis: EmbeddedRedis | EmbeddedCluster
    env: dict[str, str]
    logs: Path
    # A Celery broker of its own (a cluster cannot be one).
    broker: EmbeddedRedis | None = None
    web_ports: list[int] = field(default_factory=list)
    # What ``restart`` needs: the Procfile type of each process, the port of each web process.
    kinds: dict[str, str] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    _log_files: list[Any] = field(default_factory=list)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.web_ports[0]}"

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {API_KEY}"}

    def url(self, path: str, *, web: int = 0) -> str:
        return f"http://127.0.0.1:{self.web_ports[web]}{path}"

    def client(self) -> redis.Redis:
        if isinstance(self.redis, EmbeddedCluster):
            return redis.RedisCluster.from_url(self.redis.url, decode_responses=True)  # type: ignore[return-value]
        return redis.Redis.from_url(self.redis.url, decode_responses=True)

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

    # -- processes ---------------------------------------------------------------------------------

    def start(self, name: str, kind: str | None = None, **env: str) -> subprocess.Popen[bytes]:
        """Start one Procfile process (``kind``, default ``name``) under the name ``name``."""
        kind = kind or name
        process_env = {**self.env, **env}
        if kind == "web":
            port = int(env.get("PORT") or free_port())
            process_env["PORT"] = str(port)
            if port not in self.web_ports:
                self.web_ports.append(port)
            self.ports[name] = port
        log = open(self.logs / f"{name}.log", "ab")  # noqa: SIM115 - closed in stop_all
        self._log_files.append(log)
        process = subprocess.Popen(
            ["sh", "-c", procfile_commands()[kind]],
            env=process_env,
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.processes[name] = process
        self.kinds[name] = kind
        return process

    def restart(self, name: str) -> subprocess.Popen[bytes]:
        """Start ``name`` again once it has stopped: a web process on the port it had, so its clients find it."""
        env = {"PORT": str(self.ports[name])} if name in self.ports else {}
        return self.start(name, self.kinds[name], **env)

    def signal(self, name: str, signum: int) -> None:
        os.killpg(self.processes[name].pid, signum)

    def wait_stopped(self, name: str, timeout_s: float) -> float:
        """Wait until every process of ``name``'s group is gone (sh exits before the program it ran)."""
        started = time.monotonic()
        process = self.processes[name]

        def group_gone() -> bool:
            process.poll()  # reap the shell, or the group never looks empty
            try:
                os.killpg(process.pid, 0)
            except ProcessLookupError:
                return True
            return False

        wait_for(
            group_gone,
            timeout_s=timeout_s,
            interval_s=0.05,
            message=f"{name} still running {timeout_s}s after the signal",
        )
        process.wait(1)
        return time.monotonic() - started

    def kill(self, name: str) -> None:
        """SIGKILL, no chance to clean up: what a crash or an OOM kill does."""
        self.signal(name, signal.SIGKILL)
        self.processes[name].wait(10)

    def wait_ready(self, *, consumers: int = 1, workers: int = 1, timeout_s: float = 90) -> None:
        def ready() -> bool:
            for name, process in self.processes.items():
                if process.poll() is not None and not name.startswith("gone-"):
                    raise RuntimeError(f"{name} exited with {process.returncode}; see {self.logs}/{name}.log")
            # With OPS_TOKEN, the checks are for its holder.
            ops = {"Authorization": f"Bearer {self.env['OPS_TOKEN']}"} if self.env.get("OPS_TOKEN") else {}
            checks = httpx.get(self.url("/readyz"), headers=ops, timeout=5).json().get("checks", {})
            return (
                checks.get("consumers", {}).get("alive", 0) >= consumers
                and checks.get("celery", {}).get("workers", 0) >= workers
            )

        wait_for(
            quietly(ready, httpx.HTTPError, ValueError),
            timeout_s=timeout_s,
            interval_s=0.3,
            message=f"stack not ready after {timeout_s}s (see {self.logs})",
        )

    def stop_all(self) -> None:
        """SIGTERM every process group, wait up to 20 s for the shells the Procfile lines run in, then SIGKILL
        what is left of each group: a child still shutting down after its shell exited (a Celery worker) must
        not outlive the test."""
        for process in self.processes.values():
            _signal_group(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        for process in self.processes.values():
            with suppress(subprocess.TimeoutExpired):
                process.wait(max(0.1, deadline - time.monotonic()))
            _signal_group(process.pid, signal.SIGKILL)
            with suppress(subprocess.TimeoutExpired):
                process.wait(5)
        for log in self._log_files:
            log.close()

    def stop_servers(self) -> None:
        self.redis.stop()
        if self.broker is not None:
            self.broker.stop()


def _signal_group(pgid: int, signum: int) -> None:
    with suppress(ProcessLookupError):
        os.killpg(pgid, signum)


def build_stack(directory: Path, logs: Path, *, cluster: bool = False, **env: str) -> Stack:
    """An embedded Redis (with AOF, so it can be restarted with its data) and the environment of every process.

    With ``cluster``: a 3-master Redis Cluster for the streams and a standalone Redis as Celery's broker.
    """
    logs.mkdir(parents=True, exist_ok=True)
    for old in logs.glob("*.log"):
        old.unlink()
    server: EmbeddedRedis | EmbeddedCluster
    broker = None
    if cluster:
        server = EmbeddedCluster(directory / "cluster").start()
        broker = EmbeddedRedis(directory / "broker", appendonly=False).start()
        env = {"REDIS_CLUSTER": "true", "CELERY_BROKER_URL": broker.url, **env}
    else:
        server = EmbeddedRedis(directory).start()
    base = {k: v for k, v in os.environ.items() if k not in _SCRUB}
    keys_file = directory / "keys.toml"
    keys_file.write_text(KEYS_FILE)
    base.update(
        {
            "REDIS_URL": server.url,
            "API_KEYS": f"{API_KEY},other:{OTHER_KEY}",
            "API_KEYS_FILE": str(keys_file),
            "SECRET_KEY": "e2e-secret",
            "WEB_CONCURRENCY": "2",
            "CELERY_CONCURRENCY": "50",
            "LOG_FORMAT": "json",
            "SSE_KEEPALIVE_S": "1",
            "PRESENCE_INTERVAL_S": "0.5",
            "CONSUMER_HEARTBEAT_MS": "200",
            "CONSUMER_CLAIM_IDLE_MS": "2000",
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
            **env,
        }
    )
    return Stack(redis=server, env=base, logs=logs, broker=broker)


@contextmanager
def running_stack(
    directory: Path,
    logs: Path,
    *,
    processes: tuple[str, ...] = ("web", "worker", "consumer"),
    cluster: bool = False,
    **env: str,
) -> Iterator[Stack]:
    """A stack with ``processes`` started and ready; everything stopped on the way out."""
    stack = build_stack(directory, logs, cluster=cluster, **env)
    try:
        for name in processes:
            stack.start(name)
        stack.wait_ready(workers=1 if "worker" in processes else 0, consumers=1 if "consumer" in processes else 0)
        yield stack
    finally:
        stack.stop_all()
        stack.stop_servers()

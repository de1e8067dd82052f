"""The real Procfile under honcho, as ``make dev`` and a Procfile runner run it: up, one answer, Ctrl-C, all gone."""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.support import quietly, wait_for
from tests.support.procfile import ROOT
from tests.support.sse import read_sse
from tests.support.stack import API_KEY, build_stack

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

PROMPT = "Procfile under honcho:  every token,\nexactly once. "
# honcho gives process type n of the Procfile the port base + 100 * n: web, worker, consumer, flower.
PORT_OFFSETS = (0, 100, 200, 300)
FLOWER_OFFSET = 300


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("0.0.0.0", port))
        except OSError:
            return False
        return True


def _base_port() -> int:
    for _ in range(100):
        base = secrets.randbelow(20000) + 20000
        if all(_port_free(base + offset) for offset in PORT_OFFSETS):
            return base
    raise RuntimeError("no free set of ports for honcho")


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """State and parent pid of a process, from /proc; None once it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name is in parentheses and may itself hold spaces or parentheses.
    fields = stat.rsplit(")", 1)[1].split()
    return fields[0], int(fields[1])


def _descendants(root: int) -> set[int]:
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (stat := _proc_stat(int(entry.name))) is not None:
            parents[int(entry.name)] = stat[1]
    found: set[int] = set()
    frontier = {root}
    while frontier:
        frontier = {pid for pid, parent in parents.items() if parent in frontier and pid not in found}
        found |= frontier
    return found


def _running(pids: set[int]) -> set[int]:
    # A zombie has exited; only its parent (or init) has not collected it yet.
    return {pid for pid in pids if (stat := _proc_stat(pid)) is not None and stat[0] != "Z"}


def _wait_ready(base_url: str, honcho: subprocess.Popen[bytes], logs: Path, timeout_s: float = 120) -> None:
    def ready() -> bool:
        if honcho.poll() is not None:
            raise RuntimeError(f"honcho exited with {honcho.returncode}; see {logs}/honcho.log")
        checks = httpx.get(f"{base_url}/readyz", timeout=5).json().get("checks", {})
        return checks.get("consumers", {}).get("alive", 0) >= 1 and checks.get("celery", {}).get("workers", 0) >= 1

    message = f"web not ready after {timeout_s}s; see {logs}/honcho.log"
    wait_for(quietly(ready, httpx.HTTPError, ValueError), timeout_s=timeout_s, interval_s=0.3, message=message)


def _wait_status(url: str, *, auth: tuple[str, str] | None = None, timeout_s: float = 60) -> int:
    answer = quietly(lambda: httpx.get(url, auth=auth, timeout=5).status_code, httpx.HTTPError)
    return wait_for(answer, timeout_s=timeout_s, interval_s=0.3, message=f"{url} did not answer within {timeout_s}s")


@pytest.mark.timeout(300)
def test_procfile_under_honcho_serves_and_stops_on_sigint(tmp_path: Path) -> None:
    logs = ROOT / "test-artifacts" / "honcho-logs"
    password = secrets.token_urlsafe(12)
    stack = build_stack(
        tmp_path / "redis", logs, FLOWER_BASIC_AUTH=f"admin:{password}", WEB_CONCURRENCY="2", CELERY_CONCURRENCY="10"
    )
    env = dict(stack.env)
    env.pop("PORT", None)  # honcho sets each process type's PORT itself
    # An empty env file: a developer's .env next to the Procfile must not point the test at another Redis.
    empty_env = tmp_path / "empty.env"
    empty_env.write_text("")
    port = _base_port()
    base_url = f"http://127.0.0.1:{port}"
    log = (logs / "honcho.log").open("wb")
    honcho = subprocess.Popen(
        [sys.executable, "-m", "honcho", "start", "-f", "Procfile", "-p", str(port), "-e", str(empty_env)],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    processes: set[int] = set()
    try:
        # Given the four Procfile processes, up: web answers with a live consumer and Celery worker
        _wait_ready(base_url, honcho, logs)
        auth = {"Authorization": f"Bearer {API_KEY}"}

        # When one echo generation is submitted and read over SSE
        created = httpx.post(
            f"{base_url}/v1/generations",
            json={"model": "echo", "prompt": PROMPT, "options": {"delay_ms": 5}},
            headers=auth,
            timeout=10,
        )
        assert created.status_code == 202, created.text
        result = read_sse(base_url + created.json()["events_url"], headers=auth)

        # Then it streams the prompt exactly, once, and ends with done
        assert result.status == 200 and result.ended_by_server
        assert "".join(e.data["content"] for e in result.events if e.event == "token") == PROMPT
        assert [e.data["seq"] for e in result.events] == list(range(len(result.events)))
        assert result.events[-1].event == "done"

        # And Flower, on port + 300, wants its basic auth
        flower = f"http://127.0.0.1:{port + FLOWER_OFFSET}/"
        assert _wait_status(flower) == 401
        assert _wait_status(flower, auth=("admin", password)) == 200

        # When honcho gets Ctrl-C (SIGINT)
        processes = _descendants(honcho.pid)
        assert len(processes) >= 8, processes  # 4 honcho runners, 4 shells, and what they started
        stopping = time.monotonic()
        honcho.send_signal(signal.SIGINT)

        # Then honcho and every process it started are gone within 30 s
        honcho.wait(30)
        wait_for(
            lambda: not _running(processes),
            timeout_s=max(0.0, 30 - (time.monotonic() - stopping)),
            interval_s=0.1,
            message=f"still running 30 s after SIGINT: {sorted(_running(processes))}",
        )
    finally:
        for pid in _running(processes | (_descendants(honcho.pid) if honcho.poll() is None else set())):
            os.kill(pid, signal.SIGKILL)
        if honcho.poll() is None:
            honcho.kill()
            honcho.wait()
        log.close()
        stack.stop_servers()

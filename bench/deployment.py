"""The deployment the benchmark measures, shared by its parts: where results go, the stack's environment, and
the load process each step runs (``bench.load``)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import psutil
import redis

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"

# The deployment under load: no limits in the way, one gevent worker per web process, quiet logs, the
# production defaults for keep-alives and consumer heartbeats.
STACK_ENV = {
    "RATE_LIMIT": "",
    "MAX_RUNNING_PER_KEY": "0",
    "WEB_CONCURRENCY": "1",
    "CELERY_CONCURRENCY": "1000",
    "LOG_LEVEL": "WARNING",
    "SSE_KEEPALIVE_S": "15",
    "CONSUMER_HEARTBEAT_MS": "2000",
    "CONSUMER_CLAIM_IDLE_MS": "10000",
}


def report_name(day: str, results: Path = RESULTS) -> str:
    """The name of a run's report: its day, or ``<day>-2``, ``<day>-3``, … when a report of that day is there."""
    name, n = day, 1
    while (results / f"{name}.md").exists() or (results / f"{name}.json").exists():
        n += 1
        name = f"{day}-{n}"
    return name


def rss_mb(pid: int) -> float:
    try:
        process = psutil.Process(pid)
        return float(sum(p.memory_info().rss for p in [process, *process.children(recursive=True)]) / 2**20)
    except psutil.NoSuchProcess:
        return 0.0


def web_worker_pid(stack_pid: int) -> int:
    """The gunicorn worker under the ``sh`` that runs the Procfile line."""
    children = psutil.Process(stack_pid).children(recursive=True)
    workers = [p for p in children if p.name().startswith("gunicorn") or "gunicorn" in " ".join(p.cmdline())]
    return workers[-1].pid if workers else stack_pid


def run_load(system: str, url: str, credential: str, streams: int, rate: float, tokens: int) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-m", "bench.load", system, url, credential, str(streams), str(rate), str(tokens)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-2000:])
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def redis_connections(client: redis.Redis, name: str) -> int:
    return sum(1 for c in client.client_list() if c.get("name", "").startswith(name))

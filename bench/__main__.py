"""``make bench``: tokenbridge's full pipeline against a Flask-SSE baseline, in one run on this machine.

Both are served by gunicorn with one gevent worker on an embedded Redis. A separate load process
(``bench.load``) reads every stream and timestamps every token; it reports its own CPU so that a reader can
tell whether it was the bottleneck. Writes ``bench/results/<date>.md`` and a PNG plot, and prints the table.

Environment: BENCH_LEVELS (default "100,300,1000" streams), BENCH_RATE (20 tokens/s per stream),
BENCH_TOKENS (60 per stream), BENCH_IDLE (idle connections, default 5000).
"""

from __future__ import annotations

import asyncio
import datetime
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import psutil
import redis

from bench.client import hold_idle
from bench.ttft import measure as measure_ttft
from bridge.embedded import EmbeddedRedis, free_port
from tests.stack import API_KEY, Stack, build_stack

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


def _rss_mb(pid: int) -> float:
    try:
        process = psutil.Process(pid)
        return sum(p.memory_info().rss for p in [process, *process.children(recursive=True)]) / 2**20
    except psutil.NoSuchProcess:
        return 0.0


def _web_worker_pid(stack_pid: int) -> int:
    """The gunicorn worker under the ``sh`` that runs the Procfile line."""
    children = psutil.Process(stack_pid).children(recursive=True)
    workers = [p for p in children if p.name().startswith("gunicorn") or "gunicorn" in " ".join(p.cmdline())]
    return workers[-1].pid if workers else stack_pid


def _load(system: str, url: str, credential: str, streams: int, rate: float, tokens: int) -> dict[str, Any]:
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


def _redis_connections(client: redis.Redis, name: str) -> int:
    return sum(1 for c in client.client_list() if c.get("name", "").startswith(name))


def run_ours(levels: list[int], rate: float, tokens: int, idle: int) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    stack = build_stack(
        Path(tempfile.mkdtemp(prefix="bench-redis-")),
        ROOT / "test-artifacts" / "bench-logs",
        **STACK_ENV,
    )
    rows: list[dict[str, Any]] = []
    extra: dict[str, Any] = {}
    try:
        for name in ("web", "worker", "consumer"):
            stack.start(name)
        stack.wait_ready()
        client = stack.client()
        ttft = sorted(measure_ttft(stack.base_url, API_KEY, 100))
        extra["ttft_echo_ms"] = {"p50": round(ttft[len(ttft) // 2], 2), "p99": round(ttft[int(0.99 * len(ttft))], 2)}
        for streams in levels:
            print(f"  tokenbridge: {streams} streams …", flush=True)
            row = _load("ours", stack.base_url, API_KEY, streams, rate, tokens)
            row["rss_mb"] = {name: round(_rss_mb(p.pid), 1) for name, p in stack.processes.items()}
            row["redis_connections_web"] = _redis_connections(client, "tokenbridge-web")
            rows.append(row)
        extra["idle"] = _idle_test(stack, client, idle)
        client.close()
    finally:
        stack.stop_all()
        stack.redis.stop()
    return rows, extra


def _idle_test(stack: Stack, client: redis.Redis, count: int) -> dict[str, Any]:
    """Many idle SSE clients on one web process: RSS per connection, Redis connections before and after."""
    generation = stack.create(model="external", prompt="idle")  # never fed: its stream stays idle
    worker = _web_worker_pid(stack.processes["web"].pid)
    before_rss, before_conns = _rss_mb(worker), _redis_connections(client, "tokenbridge-web")
    opened: list[int] = []

    async def hold() -> None:
        stop = asyncio.Event()
        headers = {"Authorization": f"Bearer {API_KEY}"}
        tasks = []
        for _ in range(count):
            tasks.append(
                asyncio.create_task(
                    hold_idle("127.0.0.1", stack.web_ports[0], generation["events_url"], headers, opened, stop)
                )
            )
            if len(tasks) % 200 == 0:
                await asyncio.sleep(0.05)
        deadline = time.monotonic() + 120
        while len(opened) < count and time.monotonic() < deadline and not all(t.done() for t in tasks):
            await asyncio.sleep(0.5)
        await asyncio.sleep(2)
        measured["rss"] = _rss_mb(worker)
        measured["conns"] = _redis_connections(client, "tokenbridge-web")
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)

    import resource

    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    measured: dict[str, float] = {}
    asyncio.run(hold())
    per_kb = (measured["rss"] - before_rss) * 1024 / max(1, len(opened))
    return {
        "requested": count,
        "opened": len(opened),
        "web_rss_before_mb": round(before_rss, 1),
        "web_rss_after_mb": round(measured["rss"], 1),
        "rss_per_connection_kb": round(per_kb, 1),
        "redis_connections_before": before_conns,
        "redis_connections_after": int(measured["conns"]),
    }


def run_baseline(levels: list[int], rate: float, tokens: int) -> list[dict[str, Any]]:
    server = EmbeddedRedis(Path(tempfile.mkdtemp(prefix="bench-baseline-")), appendonly=False).start()
    port = free_port()
    env = {**os.environ, "REDIS_URL": server.url, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    web = subprocess.Popen(
        [
            "gunicorn",
            "--worker-class",
            "gevent",
            "--workers",
            "1",
            "--worker-connections",
            "10000",
            "--no-control-socket",
            "--graceful-timeout",
            "2",
            "--bind",
            f"127.0.0.1:{port}",
            "bench.baseline_app:create_app()",
        ],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    rows: list[dict[str, Any]] = []
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(url + "/nothing", timeout=1)
                break
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        client = redis.Redis.from_url(server.url)
        for streams in levels:
            print(f"  Flask-SSE: {streams} streams …", flush=True)
            row = _load("baseline", url, server.url, streams, rate, tokens)
            row["rss_mb"] = {"web": round(_rss_mb(web.pid), 1)}
            row["redis_connections_web"] = len(client.client_list()) - 1
            rows.append(row)
        client.close()
    finally:
        os.killpg(web.pid, signal.SIGTERM)
        web.wait(30)
        server.stop()
    return rows


def _table(ours: list[dict[str, Any]], baseline: list[dict[str, Any]]) -> str:
    columns = ["streams", "system", "p50 ms", "p90 ms", "p99 ms", "max ms", "delivered / expected", "gaps", "dups"]
    columns += ["tokens/s", "load CPU s", "web RSS MB", "Redis conns (web)"]
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join(" --- " for _ in columns) + "|"]
    for row in [r for pair in zip(ours, baseline, strict=False) for r in pair]:
        lat = row["latency_ms"]
        throughput = row["delivered"] / row["elapsed_s"] if row["elapsed_s"] else 0
        name = "tokenbridge" if row["system"] == "ours" else "Flask-SSE"
        lines.append(
            f"| {row['streams']} | {name} | {lat['p50']} | {lat['p90']} | {lat['p99']} | {lat['max']} | "
            f"{row['delivered']} / {row['expected']} | {row['gaps']} | {row['duplicates']} | {throughput:.0f} | "
            f"{row['client_cpu_s']:.1f} | {row['rss_mb'].get('web')} | {row['redis_connections_web']} |"
        )
    return "\n".join(lines)


def _plot(ours: list[dict[str, Any]], baseline: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(8, 5))
    for rows, label, style in ((ours, "tokenbridge", "-"), (baseline, "Flask-SSE", "--")):
        for quantile, marker in (("p50", "o"), ("p99", "s")):
            xs = [r["streams"] for r in rows]
            ys = [r["latency_ms"][quantile] for r in rows]
            axis.plot(xs, ys, style, marker=marker, label=f"{label} {quantile}")
    axis.set_xscale("log")
    axis.set_yscale("log")
    axis.set_xlabel("concurrent streams (20 tokens/s each)")
    axis.set_ylabel("delivery latency, producer → client (ms)")
    axis.grid(True, which="both", alpha=0.3)
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def main() -> None:
    levels = [int(v) for v in os.environ.get("BENCH_LEVELS", "100,300,1000").split(",")]
    rate = float(os.environ.get("BENCH_RATE", "20"))
    tokens = int(os.environ.get("BENCH_TOKENS", "60"))
    idle = int(os.environ.get("BENCH_IDLE", "5000"))
    print(f"Benchmark: {levels} streams x {rate:g} tokens/s x {tokens} tokens, {os.cpu_count()} cores")
    ours, extra = run_ours(levels, rate, tokens, idle)
    baseline = run_baseline(levels, rate, tokens)
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d")
    plot = RESULTS / f"{stamp}.png"
    _plot(ours, baseline, plot)
    table = _table(ours, baseline)
    report = f"""# Benchmark {stamp}

Machine: {os.cpu_count()} cores, everything on one box (embedded Redis {EmbeddedRedis(Path(".")).version()}).
Load: {levels} concurrent streams x {rate:g} tokens/s x {tokens} tokens. Both systems: gunicorn, one gevent
worker. tokenbridge runs its full pipeline (Celery worker, consumer worker, hub); Flask-SSE publishes with
Redis pub/sub. Latency is per token, from the producer's timestamp to receipt by the load process.

{table}

POST → first token at an SSE client (`echo`, no delay, 100 runs): p50 {extra["ttft_echo_ms"]["p50"]} ms,
p99 {extra["ttft_echo_ms"]["p99"]} ms.

Idle connections on one web process: {json.dumps(extra["idle"])}

![latency vs load]({plot.name})

Raw results:

```json
{json.dumps({"ours": ours, "baseline": baseline, "extra": extra}, indent=1)}
```
"""
    (RESULTS / f"{stamp}.md").write_text(report)
    print(table)
    print(f"TTFT echo: {extra['ttft_echo_ms']}; idle: {extra['idle']}")
    print(f"Report: {RESULTS / f'{stamp}.md'}")


if __name__ == "__main__":
    main()

"""``make bench``: tokenbridge's full pipeline against a Flask-SSE baseline, in one run on this machine.

Both are served by gunicorn with one gevent worker on an embedded Redis. A separate load process
(``bench.load``) reads every stream and timestamps every token; it reports its own CPU so that a reader can
tell whether it was the bottleneck. Writes ``bench/results/<date>.md`` and ``.json`` and a PNG plot, and prints
the table and the targets (one line each, "met" or "MISSED" with the figure).

Every step also reports the CPU each process spent per delivered token (web, worker, consumer, Redis, load
client); the step of BENCH_PROFILE_AT streams then runs once more, profiled with py-spy (raw stacks under
``bench/results/<date>-profiles/``, summary in the report), so that the profiler's CPU stays out of the measured one.
A last step streams one long answer and compares the cost per token at its start and at its end.
Each token's latency is also split at its raw write (``latency_split_ms``: producer ts to the stream id's
clock, the worker's part; from there to receipt, the consumer's, the hub's and web's), for every token and for each
stream's first second, so that a missed p99 says which side of the raw write it went; and counted from when its
reader's stream was answered, for a token written before (``latency_ms_once_connected``, with the share of such
tokens): Flask-SSE publishes nothing before every reader is subscribed, tokenbridge's answers start when submitted.

Then what a generation costs besides its tokens (tokenbridge only; Flask-SSE has no submissions, no WebSocket,
keeps nothing in Redis and calls no model), each part in its own module:

- ``generations`` (bench/costs.py): CPU per generation of every process (web, worker, consumer, Redis,
  children included): BENCH_GENERATIONS (300) empty answers (``echo`` of an empty user message), 20 at a time,
  each read over SSE to ``done``. Target: ≤ 4 ms in all.
- ``burst`` (bench/costs.py): BENCH_BURST (1000) submissions of 20 tokens at 20 tokens/s, POSTed 50 at a time,
  each read over SSE: time to first token from the burst's start and from each POST's start. Target: p50 ≤ 1.5 s
  from each POST's start.
- ``ws`` (bench/ws.py): BENCH_WS_READERS (150) readers x BENCH_WS_TOKENS (100) tokens at 20 tokens/s, read over
  SSE and then over WebSocket: the web worker's CPU per delivered event. Target: WebSocket ≤ 1.2 x SSE.
- ``memory`` (bench/memory.py, on a stack of its own): BENCH_MEMORY_ANSWERS (500) answers x BENCH_MEMORY_TOKENS
  (200) unpaced tokens in BENCH_MEMORY_SESSIONS (100) sessions: Redis ``used_memory`` per token right after, and
  BENCH_RESUME_WINDOW_S (5; passed to the stack as REDIS_RESUME_WINDOW_MS) + 3 s later; MEMORY USAGE of one
  answer's keys. Targets: ≤ 150 bytes per token right after; after the window ≤ the text + 1 KB per answer.
- ``upstream`` (bench/upstream_tls.py): BENCH_UPSTREAM_GENERATIONS (50) generations, 2 at a time, of a local
  OpenAI-compatible model over TLS (self-signed certificate made with ``openssl``) that keeps connections
  alive: TLS handshakes per generation. Target: no more handshakes in all than generations running at once.
- ``tracing`` (bench/tracing.py, two stacks of their own): BENCH_TRACING_STREAMS (300) x BENCH_TRACING_TOKENS
  (100) at BENCH_RATE, twice on a stack with tracing off and twice on one exporting over OTLP, alternated: CPU
  per token per process, off and on.

Targets against Flask-SSE in the same run: pipeline CPU per delivered token at 300 streams no more than its; at
300 streams p50 ≤ 15 ms and p99 ≤ 1.5 x its p99; capacity (p99 ≤ 100 ms, no gap or duplicate) ≥ 2 x its.

Environment: BENCH_LEVELS (default "100,200,300,500,750,1000,1500" streams), BENCH_RATE (20 tokens/s per
stream), BENCH_TOKENS (200 per stream), BENCH_IDLE (idle connections, default 10000), BENCH_PROFILE_AT (300),
BENCH_LONG_TOKENS (20000 tokens of the long answer, 0 to skip), BENCH_SYSTEMS ("ours,baseline"), the sizes
above (0 skips a part), BENCH_ONLY (a comma-separated list of parts to run alone: latency (the load levels
against Flask-SSE, the unloaded first token, the long answer, the idle connections), generations, burst, ws,
memory, upstream, tracing; default all), BENCH_NAME (the report's name instead of the date, or of the date with -2,
-3, … when a report of that day exists), BENCH_BEFORE (an earlier run's JSON: its CPU per token and its headline
figures shown next to this run's).

One part alone, small: ``BENCH_ONLY=memory BENCH_MEMORY_ANSWERS=10 BENCH_MEMORY_TOKENS=50 BENCH_NAME=trial
python -m bench``.
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
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import httpx
import redis

from bench import costs, report, tables
from bench.client import hold_idle
from bench.deployment import (
    RESULTS,
    ROOT,
    STACK_ENV,
    redis_connections,
    report_name,
    rss_mb,
    run_load,
    web_worker_pid,
)
from bench.memory import redis_memory
from bench.plan import PARTS, Plan
from bench.profile import (
    command_stats,
    cpu_seconds,
    machine_yardstick_ms,
    profile_table,
    python_pid,
    start_profiles,
)
from bench.tracing import tracing_cost
from bench.ttft import measure as measure_ttft
from bench.upstream_tls import TlsUpstream, keepalive, tls_upstream
from bench.ws import web_cpu_per_event
from bridge.embedded import EmbeddedRedis, free_port
from tests.support.stack import API_KEY, Stack, build_stack


def _measured_load(
    system: str,
    url: str,
    credential: str,
    streams: int,
    rate: float,
    tokens: int,
    cpu_pids: dict[str, int],
    profile: tuple[dict[str, int], Path] | None = None,
    redis_client: redis.Redis | None = None,
) -> dict[str, Any]:
    """One load step, with the CPU each process spent per delivered token (and a profile when asked)."""
    before = {name: cpu_seconds(pid) for name, pid in cpu_pids.items()}
    commands_before = command_stats(redis_client) if redis_client is not None else {}
    profilers = []
    if profile is not None:
        # Sample the middle of the step: streams last tokens / rate seconds after a ramp of about a second.
        duration_s = max(2.0, tokens / rate - 3)
        timer = threading.Timer(
            2.0, lambda: profilers.extend(start_profiles(profile[0], profile[1], duration_s=duration_s))
        )
        timer.start()
    row = run_load(system, url, credential, streams, rate, tokens)
    if profile is not None:
        timer.join()
        for profiler in profilers:
            profiler.wait(60)
    delivered = max(1, row["delivered"])
    cpu = {name: cpu_seconds(pid) - before[name] for name, pid in cpu_pids.items()}
    cpu["load client"] = row["client_cpu_s"]
    if "producer_cpu_s" in row:
        cpu["publisher"] = row["producer_cpu_s"]
    per_token = {name: round(seconds * 1e6 / delivered, 1) for name, seconds in cpu.items()}
    per_token["pipeline"] = round(sum(v for k, v in per_token.items() if k != "load client"), 1)
    row["cpu_us_per_token"] = per_token
    row["cores"] = os.cpu_count()
    if redis_client is not None:
        # Where Redis spends its time, per delivered token: the commands (scripts count as EVALSHA).
        after = command_stats(redis_client)
        spent = {
            name: (stats[0] - commands_before.get(name, (0, 0))[0], stats[1] - commands_before.get(name, (0, 0))[1])
            for name, stats in after.items()
        }
        top = sorted(spent.items(), key=lambda item: -item[1][1])[:8]
        row["redis_commands_per_token"] = {
            name: {"calls": round(calls / delivered, 3), "us": round(usec / delivered, 2)}
            for name, (calls, usec) in top
        }
    return row


@contextmanager
def _running(logs: str, env: dict[str, str], worker_env: dict[str, str] | None = None) -> Iterator[Stack]:
    """A stack of STACK_ENV plus ``env`` (the worker also gets ``worker_env``), started and ready; stopped after."""
    stack = build_stack(
        Path(tempfile.mkdtemp(prefix="bench-redis-")),
        ROOT / "test-artifacts" / logs,
        **{**STACK_ENV, **env},  # type: ignore[arg-type]
    )
    try:
        stack.start("web")
        stack.start("worker", **(worker_env or {}))
        stack.start("consumer")
        stack.wait_ready()
        yield stack
    finally:
        stack.stop_all()
        stack.stop_servers()


def run_ours(
    levels: list[int],
    rate: float,
    tokens: int,
    idle: int,
    profile_at: int,
    long_tokens: int,
    profiles: Path,
    plan: Plan,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The load levels on a fresh stack (as Flask-SSE's are), then the costs the plan asks for on another, and Redis
    memory on a third: what one part leaves in Redis (answers kept for the resume window, the AOF they grew) would
    weigh on the next one's Redis CPU."""
    rows: list[dict[str, Any]] = []
    extra: dict[str, Any] = {}
    if plan.wants("latency"):
        with _running("bench-logs", {}) as stack:
            rows = _latency(stack, levels, rate, tokens, idle, profile_at, long_tokens, profiles, extra)
    if any(plan.wants(part) for part in ("generations", "burst", "ws", "upstream")):
        with ExitStack() as context:
            upstream: TlsUpstream | None = None
            env: dict[str, str] = {}
            worker_env: dict[str, str] = {}
            if plan.wants("upstream"):
                directory = Path(context.enter_context(tempfile.TemporaryDirectory(prefix="bench-upstream-")))
                upstream, env, worker_env = context.enter_context(tls_upstream(directory))
            stack = context.enter_context(_running("bench-costs-logs", env, worker_env))
            extra.update(_costs(stack, plan, upstream))
    if plan.wants("memory"):
        print(f"  tokenbridge: Redis memory, {plan.memory_answers} answers x {plan.memory_tokens} tokens …", flush=True)
        window_ms = str(int(plan.resume_window_s * 1000))
        with _running("bench-memory-logs", {"REDIS_RESUME_WINDOW_MS": window_ms}) as stack:
            extra["memory"] = redis_memory(
                stack, plan.memory_answers, plan.memory_tokens, max(1, plan.memory_sessions), plan.resume_window_s
            )
        print("    " + "\n    ".join(report.memory_lines(extra["memory"])), flush=True)
    if plan.wants("tracing"):
        print(f"  tokenbridge: {plan.tracing_streams} streams, tracing off and on …", flush=True)
        extra["tracing"] = tracing_cost(
            lambda logs, env: _running(logs, env),
            lambda stack: _measured_load(
                "ours",
                stack.base_url,
                API_KEY,
                plan.tracing_streams,
                rate,
                plan.tracing_tokens,
                costs.stack_pids(stack),
            ),
        )
        print(f"    {report.tracing_line(extra['tracing'])}", flush=True)
    return rows, extra


def _costs(stack: Stack, plan: Plan, upstream: TlsUpstream | None) -> dict[str, Any]:
    """CPU per generation, WebSocket vs SSE, upstream connections and a burst, each when the plan asks for it."""
    extra: dict[str, Any] = {}
    if plan.wants("generations"):
        print(f"  tokenbridge: CPU per generation, {plan.generations} empty answers …", flush=True)
        extra["generation_cpu"] = costs.generation_cpu(stack, plan.generations)
        print(f"    {report.generation_cpu_line(extra['generation_cpu'])}", flush=True)
    if plan.wants("ws"):
        print(f"  tokenbridge: {plan.ws_readers} readers over SSE, then over WebSocket …", flush=True)
        extra["ws_vs_sse"] = web_cpu_per_event(stack, plan.ws_readers, plan.ws_tokens)
        print(f"    {report.ws_line(extra['ws_vs_sse'])}", flush=True)
    if upstream is not None:
        print(f"  tokenbridge: {plan.upstream_generations} generations of a TLS upstream …", flush=True)
        extra["upstream_tls"] = keepalive(stack, upstream, plan.upstream_generations)
        print(f"    {report.upstream_line(extra['upstream_tls'])}", flush=True)
    if plan.wants("burst"):
        print(f"  tokenbridge: a burst of {plan.burst} submissions …", flush=True)
        extra["burst"] = costs.burst(stack, plan.burst)
        print(f"    {report.burst_line(extra['burst'])}", flush=True)
    return extra


def _latency(
    stack: Stack,
    levels: list[int],
    rate: float,
    tokens: int,
    idle: int,
    profile_at: int,
    long_tokens: int,
    profiles: Path,
    extra: dict[str, Any],
) -> list[dict[str, Any]]:
    """The load levels (profiled at ``profile_at``), the unloaded first token, the long answer, idle clients."""
    rows: list[dict[str, Any]] = []
    client = stack.client()
    cpu_pids = costs.stack_pids(stack)
    markers = {"web": "gunicorn", "worker": "celery", "consumer": "workers"}
    py_pids = {name: python_pid(stack.processes[name].pid, marker) for name, marker in markers.items()}
    ttft = sorted(measure_ttft(stack.base_url, API_KEY, 100))
    extra["ttft_echo_ms"] = {"p50": round(ttft[len(ttft) // 2], 2), "p99": round(ttft[int(0.99 * len(ttft))], 2)}
    for streams in levels:
        print(f"  tokenbridge: {streams} streams …", flush=True)
        row = _measured_load("ours", stack.base_url, API_KEY, streams, rate, tokens, cpu_pids, None, client)
        row["rss_mb"] = {name: round(rss_mb(p.pid), 1) for name, p in stack.processes.items()}
        row["redis_connections_web"] = redis_connections(client, "tokenbridge-web")
        rows.append(row)
        print(
            f"    p50 {row['latency_ms']['p50']} ms, p99 {row['latency_ms']['p99']} ms, "
            f"CPU µs/token {row['cpu_us_per_token']}",
            flush=True,
        )
    if profile_at in levels:
        # The profiled step runs once more, apart: py-spy's own CPU on the same cores would slow the measured one.
        print(f"  tokenbridge: {profile_at} streams again, profiled …", flush=True)
        row = _measured_load("ours", stack.base_url, API_KEY, profile_at, rate, tokens, cpu_pids, (py_pids, profiles))
        extra["profiled_step"] = {key: row[key] for key in ("streams", "latency_ms", "cpu_us_per_token")}
    if long_tokens:
        print(f"  tokenbridge: one answer of {long_tokens} tokens …", flush=True)
        extra["long_answer"] = _long_answer(stack, client, cpu_pids, long_tokens)
    extra["idle"] = _idle_test(stack, client, idle)
    client.close()
    return rows


def _long_answer(stack: Stack, client: redis.Redis, cpu_pids: dict[str, int], tokens: int) -> dict[str, Any]:
    """One long generation read by one client: CPU per token and delivery latency, first fifth vs last fifth.

    CPU is sampled with the length of the generation's client stream, so each window's cost is divided by
    the tokens committed in that window.
    """
    rate = 1000.0
    samples: list[tuple[float, int]] = []
    stop = threading.Event()
    holder: dict[str, Any] = {}

    def read() -> None:
        holder["row"] = run_load("ours", stack.base_url, API_KEY, 1, rate, tokens)

    generation_ids_before = set(client.scan_iter("llm:gen:*:meta"))
    reader = threading.Thread(target=read)
    reader.start()
    out_key = None
    while reader.is_alive() and not stop.is_set():
        if out_key is None:
            new = set(client.scan_iter("llm:gen:*:meta")) - generation_ids_before
            out_key = next(iter(new)).replace(":meta", ":out") if new else None
        length = int(client.xlen(out_key)) if out_key else 0
        samples.append((sum(cpu_seconds(pid) for pid in cpu_pids.values()), length))
        reader.join(0.25)
    row = holder.get("row", {})
    stop.set()

    def window(low: float, high: float) -> float | None:
        inside = [(cpu, n) for cpu, n in samples if low * tokens <= n <= high * tokens]
        if len(inside) < 2 or inside[-1][1] == inside[0][1]:
            return None
        return round((inside[-1][0] - inside[0][0]) * 1e6 / (inside[-1][1] - inside[0][1]), 1)

    return {
        "tokens": tokens,
        "rate": rate,
        "delivered": row.get("delivered"),
        "gaps": row.get("gaps"),
        "duplicates": row.get("duplicates"),
        "latency_ms": row.get("latency_ms"),
        "pipeline_cpu_us_per_token_first_fifth": window(0.02, 0.2),
        "pipeline_cpu_us_per_token_last_fifth": window(0.8, 0.98),
    }


def _idle_test(stack: Stack, client: redis.Redis, count: int) -> dict[str, Any]:
    """Many idle SSE clients on one web process: RSS per connection, Redis connections before and after."""
    generation = stack.create(model="external", prompt="idle")  # never fed: its stream stays idle
    worker = web_worker_pid(stack.processes["web"].pid)
    before_rss, before_conns = rss_mb(worker), redis_connections(client, "tokenbridge-web")
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
            if len(tasks) % 100 == 0:
                # 500 connections a second: a steady arrival, not a herd (a herd meets the pool's wait limit).
                await asyncio.sleep(0.2)
        deadline = time.monotonic() + 120
        while len(opened) < count and time.monotonic() < deadline and not all(t.done() for t in tasks):
            await asyncio.sleep(0.5)
        await asyncio.sleep(2)
        measured["rss"] = rss_mb(worker)
        measured["conns"] = redis_connections(client, "tokenbridge-web")
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
        assert server.process is not None
        cpu_pids = {"web": web.pid, "redis": server.process.pid}
        for streams in levels:
            print(f"  Flask-SSE: {streams} streams …", flush=True)
            row = _measured_load("baseline", url, server.url, streams, rate, tokens, cpu_pids, None, client)
            row["rss_mb"] = {"web": round(rss_mb(web.pid), 1)}
            row["redis_connections_web"] = len(client.client_list()) - 1
            rows.append(row)
        client.close()
    finally:
        os.killpg(web.pid, signal.SIGTERM)
        web.wait(30)
        server.stop()
    return rows


# Long: mostly the report's Markdown template.
def main() -> None:
    levels = [int(v) for v in os.environ.get("BENCH_LEVELS", "100,200,300,500,750,1000,1500").split(",")]
    rate = float(os.environ.get("BENCH_RATE", "20"))
    tokens = int(os.environ.get("BENCH_TOKENS", "200"))
    idle = int(os.environ.get("BENCH_IDLE", "10000"))
    profile_at = int(os.environ.get("BENCH_PROFILE_AT", "300"))
    long_tokens = int(os.environ.get("BENCH_LONG_TOKENS", "20000"))
    systems = os.environ.get("BENCH_SYSTEMS", "ours,baseline").split(",")
    plan = Plan.from_env()
    stamp = os.environ.get("BENCH_NAME") or report_name(datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d"))
    profiles = RESULTS / f"{stamp}-profiles"
    yardstick_ms = machine_yardstick_ms()
    print(f"Benchmark: {levels} streams x {rate:g} tokens/s x {tokens} tokens, {os.cpu_count()} cores")
    print(f"Parts: {', '.join(part for part in PARTS if plan.wants(part))}")
    ours, extra = (
        run_ours(levels, rate, tokens, idle, profile_at, long_tokens, profiles, plan) if "ours" in systems else ([], {})
    )
    baseline = run_baseline(levels, rate, tokens) if "baseline" in systems and plan.wants("latency") else []
    result = {"ours": ours, "baseline": baseline, "extra": extra, "machine": {"yardstick_ms": yardstick_ms}}
    RESULTS.mkdir(parents=True, exist_ok=True)
    plot = RESULTS / f"{stamp}.png"
    if ours or baseline:
        tables.plot(ours, baseline, plot)
    table = tables.latency_table(ours, baseline)
    targets = "\n".join(tables.targets(ours, baseline, extra))
    before = tables.before(result)
    profile = profile_table(profiles, ["web", "worker", "consumer"])
    flower = tables.flower_cost(profiles, [row for row in ours if row["streams"] == profile_at])
    markdown = f"""# Benchmark {stamp}

Machine: {os.cpu_count()} cores, everything on one box (embedded Redis {EmbeddedRedis(Path(".")).version()}); a fixed
pure-Python loop took {yardstick_ms} ms of CPU before the run (compare reports through it: a shared host's speed moves).
Load: {levels} concurrent streams x {rate:g} tokens/s x {tokens} tokens. Both systems: gunicorn, one gevent
worker. tokenbridge runs its full pipeline (Celery worker, consumer worker, hub); Flask-SSE publishes with
Redis pub/sub. Latency is per token, from the producer's timestamp to receipt by the load process.
Parts run: {", ".join(part for part in PARTS if plan.wants(part))}.

## Targets

{targets}

## Latency and throughput

{table}

POST → first token at an SSE client (`echo`, no delay, 100 runs): {extra.get("ttft_echo_ms")}.

Idle connections on one web process: {json.dumps(extra.get("idle"))}

One long answer: {json.dumps(extra.get("long_answer"))}

{f"![latency vs load]({plot.name})" if ours or baseline else ""}

## CPU per delivered token (µs, per process)

"pipeline" adds up every process but the load client (for Flask-SSE: its web process, Redis and the
publisher that stands in for the model).

{tables.cpu_table(ours + baseline)}

## Costs per generation, per event and per token held in Redis (tokenbridge)

Flask-SSE has no submissions, no WebSocket, keeps nothing in Redis and calls no model: these are tokenbridge's.

{report.costs_section(extra)}
{before}
## Where the time goes at {profile_at} streams (py-spy, self time, busy samples only)

Sampled at 200 Hz in a run of its own after the measured steps (py-spy's CPU shares the cores:
{tables.profiled(extra)}).
Raw stacks: `{profiles.relative_to(ROOT)}/`.

{profile}

{flower}

Raw results:

```json
{json.dumps(result, indent=1)}
```
"""
    (RESULTS / f"{stamp}.md").write_text(markdown)
    (RESULTS / f"{stamp}.json").write_text(json.dumps(result, indent=1))
    print(table)
    print(targets)
    print(f"Report: {RESULTS / f'{stamp}.md'}")


if __name__ == "__main__":
    main()

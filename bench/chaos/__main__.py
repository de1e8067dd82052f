"""Run a chaos check: start a stack (2 web, 2 worker, 2 consumer by default, Redis with AOF), drive the load,
inject faults, verify, print the figures. Exits 1 when a generation was lost, duplicated or left hanging."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import resource
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import httpx
import redis

from bench.chaos.config import Config
from bench.chaos.faults import FaultLog, FaultSchedule
from bench.chaos.load import Load, LoadResult
from bench.chaos.verify import Verdict, verify
from tests.support.stack import API_KEY, Stack, build_stack

ROOT = Path(__file__).resolve().parents[2]
GROUP = "llm:processors"


def stack_env(config: Config) -> dict[str, str]:
    """No limits in the way of the load; the recovery settings of ``config`` (the shipped ones by default)."""
    return {
        "RATE_LIMIT": "",
        "MAX_RUNNING_PER_KEY": "0",
        "WEB_CONCURRENCY": "1",
        "CELERY_CONCURRENCY": str(max(100, config.concurrency * 2)),
        "LOG_LEVEL": "WARNING",
        "SSE_KEEPALIVE_S": "1",
        "PRESENCE_INTERVAL_S": "2",
        "DEAD_AFTER_MS": str(config.dead_after_ms),
        "CONSUMER_HEARTBEAT_MS": str(config.heartbeat_ms),
        "CONSUMER_CLAIM_IDLE_MS": str(config.claim_idle_ms),
        "LEASE_MS": str(config.lease_ms),
        "TASK_RESEND_S": str(3 * config.lease_ms / 1000),
        "CELERY_SOFT_SHUTDOWN_S": "3",
        "REDIS_RETRY_S": "60",
        "CELERY_VISIBILITY_TIMEOUT_S": str(config.visibility_timeout_s),
        "CELERY_RESTORE_INTERVAL_S": str(max(1, min(10, config.visibility_timeout_s // 4))),
        # Every event is still kept when the run is verified: a generation whose window passed reads as a reset
        # with its text, and the verification compares each session's events with its generations' one by one.
        "REDIS_RESUME_WINDOW_MS": str(int((config.duration_s + config.drain_s + 600) * 1000)),
    }


def start(config: Config, logs: Path) -> Stack:
    env: Any = stack_env(config)
    stack = build_stack(Path(tempfile.mkdtemp(prefix="chaos-redis-")), logs, **env)
    for kind, count in (("web", config.webs), ("worker", config.workers), ("consumer", config.consumers)):
        for n in range(1, count + 1):
            stack.start(f"{kind}-{n}", kind)
    stack.wait_ready(consumers=config.consumers, workers=config.workers, timeout_s=180)
    return stack


def settle(client: redis.Redis, timeout_s: float = 30) -> None:
    """Wait until the consumers have released the work of the last generations."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if not client.exists("llm:work") or int(client.xpending("llm:work", GROUP)["pending"]) == 0:
                return
        except redis.RedisError:
            pass
        time.sleep(0.5)


def run(config: Config) -> tuple[LoadResult, Verdict, FaultLog, float]:
    rng = random.Random(config.seed)
    logs = ROOT / "test-artifacts" / "chaos"
    stack = start(config, logs)
    print(
        f"chaos: seed {config.seed}, stack ready (logs in {logs}, Redis data in {stack.redis.directory}); "
        f"load for {config.duration_s:.0f} s …",
        flush=True,
    )
    faults = FaultSchedule(
        stack, random.Random(config.seed + 1), interval_s=config.fault_interval_s or 1e9,
        dead_after_ms=config.dead_after_ms,
    )  # fmt: skip
    load = Load(config, rng, list(stack.web_ports), API_KEY)
    started = time.monotonic()
    try:
        if config.fault_interval_s > 0:
            faults.start()
        result = asyncio.run(_load(load, faults, config))
        elapsed = time.monotonic() - started
        print(f"chaos: load and drain took {elapsed:.0f} s; verifying …", flush=True)
        client = stack.client()
        settle(client)
        verdict = verify(result, client, GROUP)
        if verdict.hung:
            _dump_webs(stack)
        client.close()
    finally:
        stack.stop_all()
        stack.stop_servers()
    return result, verdict, faults.log, elapsed


def _dump_webs(stack: Stack) -> None:
    """What each web process says of its streams and its hub while readers hang there."""
    for name, port in stack.ports.items():
        try:
            text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
            ready = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5).text
        except httpx.HTTPError as exc:
            print(f"  {name} (port {port}): {exc}")
            continue
        lines = [line for line in text.splitlines() if line.startswith(("tokenbridge_hub", "tokenbridge_open_streams"))]
        print(f"  {name} (port {port}): {'; '.join(lines)}; readyz {ready[:300]}")


async def _load(load: Load, faults: FaultSchedule, config: Config) -> LoadResult:
    task = asyncio.create_task(load.run(config.duration_s))
    await asyncio.sleep(config.duration_s)
    # No fault during the drain: the last readers end on a whole stack.
    if faults.is_alive():
        await asyncio.to_thread(faults.stop)
    print(f"chaos: load stopped, {len(load.result.generations)} generations; draining …", flush=True)
    try:
        return await asyncio.wait_for(asyncio.shield(task), config.drain_s)
    except TimeoutError:
        print("chaos: the drain timed out; unfinished readers count as hung", flush=True)
        for line in load.unfinished():
            print(f"  waiting: {line}", flush=True)
        task.cancel()
        return load.result


def report(config: Config, result: LoadResult, verdict: Verdict, faults: FaultLog, elapsed: float) -> dict[str, Any]:
    return {
        "seed": config.seed,
        "duration_s": round(elapsed, 1),
        "config": asdict(config),
        "generations": verdict.generations,
        "tokens": verdict.tokens,
        "terminals": dict(verdict.terminals),
        "session_events_checked": verdict.session_events,
        "sessions_followed": len(result.sessions),
        "faults": sum(faults.injected.values()),
        "faults_by_kind": dict(sorted(faults.injected.items())),
        "unprovoked_exits": dict(faults.crashed),
        "lost": len(verdict.lost),
        "duplicated": len(verdict.duplicated),
        "hung": len(verdict.hung),
        "wrong": len(verdict.wrong),
        "pending": verdict.pending,
        "errors_by_code": dict(verdict.errors),
        "longest_stall_s": round(result.longest_stall[0], 2),
        "longest_stall_generation": result.longest_stall[1],
        "longest_stall_ended_by": result.longest_stall[2],
        "longest_first_wait_s": round(result.longest_first_wait[0], 2),
        "longest_first_wait_generation": result.longest_first_wait[1],
        "restarts": verdict.restarts,
        "reconnects": verdict.reconnects,
        "planned_drops": verdict.drops,
        "submit_failed": result.submit_failed,
        "producer": dict(result.producer_problems),
        "client_errors": dict(result.client_errors),
        "load_average": os.getloadavg(),
        "problems": {
            "lost": verdict.lost[:50],
            "duplicated": verdict.duplicated[:50],
            "hung": verdict.hung[:50],
            "wrong": verdict.wrong[:50],
        },
    }


def _print(summary: dict[str, Any], result: LoadResult, faults: FaultLog) -> None:
    s = summary
    print(f"chaos: {s['duration_s']} s, seed {s['seed']}")
    print(f"  generations {s['generations']} {s['terminals']}, tokens {s['tokens']}")
    print(f"  session streams followed {s['sessions_followed']}, session events checked {s['session_events_checked']}")
    print(f"  faults {s['faults']}: {s['faults_by_kind']}")
    if s["unprovoked_exits"]:
        print(f"  processes that exited with no fault on them: {s['unprovoked_exits']}")
    print(
        f"  lost {s['lost']}, duplicated {s['duplicated']}, hung {s['hung']}, wrong {s['wrong']}, "
        f"pending {s['pending']}"
    )
    print(f"  errors by code {s['errors_by_code']}")
    print(
        f"  longest reader stall {s['longest_stall_s']} s ({s['longest_stall_generation']}, ended by"
        f" {s['longest_stall_ended_by'] or '-'}); longest wait for a first event {s['longest_first_wait_s']} s"
        f" ({s['longest_first_wait_generation']})"
    )
    print(
        f"  restarts {s['restarts']}, reconnects {s['reconnects']}, planned drops {s['planned_drops']}, "
        f"submissions given up {s['submit_failed']}, producer {s['producer']}, "
        f"client errors {s['client_errors']}, load average {s['load_average']}"
    )
    created = {g.id: g.created_at for g in result.generations}
    for name, problems in s["problems"].items():
        for line in problems[:20]:
            gid = line.split(":")[0]
            at = created.get(gid)
            nearby = [
                f"{kind}:{target}@{t - at:+.1f}s" for t, kind, target in faults.timeline if at and -10 < t - at < 300
            ]
            print(f"  {name.upper()} {line}  faults: {nearby[:8]}")


def main() -> None:
    config = Config.parse()
    if config.seed == 0:
        config = Config(**{**asdict(config), "seed": random.randrange(1, 1_000_000)})
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    result, verdict, faults, elapsed = run(config)
    summary = report(config, result, verdict, faults, elapsed)
    _print(summary, result, faults)
    if config.json_path:
        Path(config.json_path).write_text(json.dumps(summary, indent=2))
    sys.exit(0 if verdict.ok else 1)


if __name__ == "__main__":
    main()

"""``make bench-cluster``: the same deployment on one Redis and on a 3-master Redis Cluster, side by side.

Each topology runs two web, two consumer and two Celery worker processes (Celery's broker is a standalone
Redis of its own on the cluster). A separate load process (``bench.load``) submits synthetic generations
through both webs and reads every stream, round robin. For each load level: delivery latency, delivered
tokens per second, gaps and duplicates; per Redis node: the commands it served during the run, which shows
whether the work is spread. Writes ``bench/results/<date>-cluster.md`` and prints the table.

Environment: BENCH_CLUSTER_LEVELS (default "20,200,600" streams), BENCH_RATE (20 tokens/s per stream),
BENCH_TOKENS (60 per stream).
"""

from __future__ import annotations

import datetime
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import redis

from bench.deployment import RESULTS, ROOT, STACK_ENV, rss_mb, run_load
from bridge.embedded import EmbeddedRedis
from tests.support.cluster import EmbeddedCluster
from tests.support.stack import API_KEY, build_stack

PROCESSES = ("web-a", "web-b", "consumer-a", "consumer-b", "worker-a", "worker-b")


def _nodes(server: EmbeddedRedis | EmbeddedCluster) -> list[redis.Redis]:
    nodes = server.nodes if isinstance(server, EmbeddedCluster) else [server]
    return [redis.Redis(host="127.0.0.1", port=node.port, decode_responses=True) for node in nodes]


def _commands(nodes: list[redis.Redis]) -> list[int]:
    return [int(node.info("stats")["total_commands_processed"]) for node in nodes]


def run(cluster: bool, levels: list[int], rate: float, tokens: int) -> list[dict[str, Any]]:
    name = "cluster" if cluster else "single"
    stack = build_stack(
        Path(tempfile.mkdtemp(prefix=f"bench-{name}-")),
        ROOT / "test-artifacts" / f"bench-{name}-logs",
        cluster=cluster,
        **STACK_ENV,
    )
    rows: list[dict[str, Any]] = []
    try:
        for process in PROCESSES:
            stack.start(process, process.split("-")[0])
        stack.wait_ready(consumers=2, workers=2)
        urls = ",".join(stack.url("", web=i) for i in range(2))
        nodes = _nodes(stack.redis)
        for streams in levels:
            print(f"  {name}: {streams} streams …", flush=True)
            before = _commands(nodes)
            row = run_load("ours", urls, API_KEY, streams, rate, tokens)
            after = _commands(nodes)
            row["topology"] = "3-master cluster" if cluster else "single Redis"
            row["node_commands"] = [b - a for a, b in zip(before, after, strict=True)]
            row["rss_mb"] = {p: round(rss_mb(stack.processes[p].pid), 1) for p in PROCESSES}
            rows.append(row)
        for node in nodes:
            node.close()
    finally:
        stack.stop_all()
        stack.stop_servers()
    return rows


def _table(rows: list[dict[str, Any]]) -> str:
    columns = ["streams", "topology", "p50 ms", "p99 ms", "delivered / expected", "gaps", "dups", "tokens/s"]
    columns += ["commands per Redis node"]
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join(" --- " for _ in columns) + "|"]
    for row in sorted(rows, key=lambda r: (r["streams"], r["topology"] != "single Redis")):
        lat = row["latency_ms"]
        throughput = row["delivered"] / row["elapsed_s"] if row["elapsed_s"] else 0
        spread = " / ".join(f"{c:,}" for c in row["node_commands"])
        lines.append(
            f"| {row['streams']} | {row['topology']} | {lat['p50']} | {lat['p99']} | "
            f"{row['delivered']} / {row['expected']} | {row['gaps']} | {row['duplicates']} | {throughput:.0f} | "
            f"{spread} |"
        )
    return "\n".join(lines)


def main() -> None:
    levels = [int(v) for v in os.environ.get("BENCH_CLUSTER_LEVELS", "20,200,600").split(",")]
    rate = float(os.environ.get("BENCH_RATE", "20"))
    tokens = int(os.environ.get("BENCH_TOKENS", "60"))
    print(f"Cluster benchmark: {levels} streams x {rate:g} tokens/s x {tokens} tokens, {os.cpu_count()} cores")
    rows = run(False, levels, rate, tokens) + run(True, levels, rate, tokens)
    table = _table(rows)
    print(table)
    RESULTS.mkdir(parents=True, exist_ok=True)
    day = datetime.date.today().isoformat()
    (RESULTS / f"{day}-cluster.json").write_text(json.dumps(rows, indent=2))
    report = RESULTS / f"{day}-cluster.md"
    report.write_text(
        f"# Single Redis vs 3-master Redis Cluster, {day}\n\n"
        f"`make bench-cluster` on this machine ({os.cpu_count()} cores); two web, two consumer and two worker "
        f"processes in each topology; {rate:g} tokens/s per stream, {tokens} tokens per stream.\n\n{table}\n"
    )
    print(f"Report: {report}")


if __name__ == "__main__":
    main()

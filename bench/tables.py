"""The load part's Markdown: the latency table, CPU per token, the plot, the targets and the comparison with an
earlier run."""

from __future__ import annotations

import itertools
import json
import os
from pathlib import Path
from typing import Any

from bench import report
from bench.profile import share


def flower_cost(profiles: Path, rows: list[dict[str, Any]]) -> str:
    """What the consumer spends on Flower (its Celery events and remote control), from its profile."""
    fraction = share(profiles / "consumer.txt", ("workers/celery_events.py", "workers/celery_control.py"))
    if fraction is None or not rows:
        return ""
    consumer_us = rows[0]["cpu_us_per_token"]["consumer"]
    return (
        f"Flower in the consumer (Celery events and remote control, waits left out): {fraction * 100:.1f} % of its "
        f"busy samples, about {fraction * consumer_us:.2f} µs of its {consumer_us} µs per delivered token "
        "(task events are sent per generation, never per token)."
    )


def profiled(extra: dict[str, Any]) -> str:
    """The profiled run's own figures, so that they are not taken for the measured step's."""
    step = extra.get("profiled_step")
    if not step:
        return "no profiled run"
    latency, cpu = step["latency_ms"], step["cpu_us_per_token"]
    return f"that run's p50 {latency['p50']} ms, p99 {latency['p99']} ms, pipeline {cpu['pipeline']} µs per token"


def latency_table(ours: list[dict[str, Any]], baseline: list[dict[str, Any]]) -> str:
    columns = ["streams", "system", "p50 ms", "p90 ms", "p99 ms", "max ms", "p99 ms after 1 s"]
    columns += ["delivered / expected", "gaps", "dups"]
    columns += ["tokens/s", "load CPU s", "web RSS MB", "Redis conns (web)"]
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join(" --- " for _ in columns) + "|"]
    # Both systems' rows of each step side by side; a run of one system alone keeps all of its rows.
    for row in [r for pair in itertools.zip_longest(ours, baseline) for r in pair if r is not None]:
        lat = row["latency_ms"]
        throughput = row["delivered"] / row["elapsed_s"] if row["elapsed_s"] else 0
        name = "tokenbridge" if row["system"] == "ours" else "Flask-SSE"
        lines.append(
            f"| {row['streams']} | {name} | {lat['p50']} | {lat['p90']} | {lat['p99']} | {lat['max']} | "
            f"{row.get('latency_ms_after_first_second', {}).get('p99', '')} | "
            f"{row['delivered']} / {row['expected']} | {row['gaps']} | {row['duplicates']} | {throughput:.0f} | "
            f"{row['client_cpu_s']:.1f} | {row['rss_mb'].get('web')} | {row['redis_connections_web']} |"
        )
    return "\n".join(lines)


def plot(ours: list[dict[str, Any]], baseline: list[dict[str, Any]], path: Path) -> None:
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


def cpu_table(rows: list[dict[str, Any]]) -> str:
    names = ["web", "worker", "consumer", "publisher", "redis", "pipeline", "load client"]
    names = [n for n in names if any(n in r.get("cpu_us_per_token", {}) for r in rows)]
    lines = [
        "| streams | system | " + " | ".join(names) + " |",
        "|" + "|".join(" --- " for _ in range(len(names) + 2)) + "|",
    ]
    for row in rows:
        cpu = row.get("cpu_us_per_token", {})
        name = "tokenbridge" if row["system"] == "ours" else "Flask-SSE"
        lines.append(f"| {row['streams']} | {name} | " + " | ".join(str(cpu.get(n, "")) for n in names) + " |")
    return "\n".join(lines)


def targets(ours: list[dict[str, Any]], baseline: list[dict[str, Any]], extra: dict[str, Any]) -> list[str]:
    """One line per target: met, or MISSED with the figure."""

    def verdict(ok: bool) -> str:
        return "met" if ok else "MISSED"

    lines = report.peer_targets(ours, baseline) + report.cost_targets(extra)
    ttft = extra.get("ttft_echo_ms")
    if ttft:
        lines.append(f"- POST → first token unloaded: p99 {ttft['p99']} ms (≤ 30): {verdict(ttft['p99'] <= 30)}")
    row = report.at(ours, 1000)
    if row is not None and row["ttft_ms"]["p50"] is not None:
        p50 = row["ttft_ms"]["p50"]
        lines.append(f"- time to first token at 1,000 streams: p50 {p50} ms (≤ 250): {verdict(p50 <= 250)}")
    idle = extra.get("idle")
    if idle:
        per = idle["rss_per_connection_kb"]
        constant = idle["redis_connections_before"] == idle["redis_connections_after"]
        lines.append(
            f"- {idle['opened']} idle SSE connections: {per} KB RSS each (≤ 20), Redis connections "
            f"{idle['redis_connections_before']} → {idle['redis_connections_after']}: "
            f"{verdict(per <= 20 and constant and idle['opened'] == idle['requested'])}"
        )
    long = extra.get("long_answer")
    if long:
        first, last = long["pipeline_cpu_us_per_token_first_fifth"], long["pipeline_cpu_us_per_token_last_fifth"]
        flat = first is not None and last is not None and last <= first * 1.25
        lines.append(
            f"- one answer of {long['tokens']} tokens: pipeline CPU {first} µs/token in its first fifth, "
            f"{last} in its last: {verdict(flat)}"
        )
    return lines


def before(result: dict[str, Any]) -> str:
    """BENCH_BEFORE (an earlier run's JSON): its CPU per token per process, and its headline figures next to
    this run's."""
    if not os.environ.get("BENCH_BEFORE"):
        return ""
    earlier = json.loads(Path(os.environ["BENCH_BEFORE"]).read_text())
    parts = [f"## Before and after\n\nThe earlier run: `{os.environ['BENCH_BEFORE']}` (same harness)."]
    if earlier.get("ours"):
        parts.append(cpu_table(earlier["ours"]))
    figures = report.before_after(earlier, result)
    if figures:
        parts.append(figures)
    return "\n\n".join(parts) + "\n"

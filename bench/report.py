"""The report's verdicts and tables: one line per target (met, or MISSED with the figure), the cost sections, and
the figures of an earlier run next to this one's. Pure functions of the results, so they are unit-tested."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

Rows = list[dict[str, Any]]
# A target set against Flask-SSE, in a run without it (BENCH_SYSTEMS=ours).
NOT_JUDGED = "not judged"


# The machine's speed, in the before/after table even when the earlier run did not measure it.
YARDSTICK = "machine yardstick: a fixed Python loop (ms of CPU)"

# A load step's latencies of each stream's tokens after its first second (bench.load).
AFTER_FIRST_SECOND = "latency_ms_after_first_second"


def verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def at(rows: Rows, streams: int) -> dict[str, Any] | None:
    return next((r for r in rows if r["streams"] == streams), None)


def capacity(rows: Rows, latency: str = "latency_ms") -> int:
    """The most streams at which every token arrived once, in order, with p99 ≤ 100 ms (of ``latency``: the whole
    step's, or ``latency_ms_after_first_second``)."""
    good = [
        r["streams"]
        for r in rows
        if (p99 := _p99(r, latency)) is not None
        and p99 <= 100
        and r["gaps"] == 0
        and r["duplicates"] == 0
        and r["delivered"] == r["expected"]
    ]
    return max(good, default=0)


def _p99(row: dict[str, Any] | None, latency: str = "latency_ms") -> float | None:
    value: float | None = ((row or {}).get(latency) or {}).get("p99")
    return value


def _tail_cause(row: dict[str, Any], peer: dict[str, Any], limit: float) -> str:
    """What a missed p99 is made of: each stream's tokens after its first second, against the whole step's."""
    after, theirs = _p99(row, AFTER_FIRST_SECOND), _p99(peer, AFTER_FIRST_SECOND)
    if after is None:
        return ""
    cause = (
        f" (measured cause: each stream's tokens after its first second have p99 {after} ms, Flask-SSE's {theirs} ms"
    )
    return cause + (": the tail is the step's starts" if after <= limit else "") + _split_cause(row) + ")"


def _split_cause(row: dict[str, Any]) -> str:
    """Which side of the raw write a token's first-second latency went: the worker's, or the rest's."""
    split = row.get("latency_split_ms") or {}
    to_raw, rest = split.get("to_raw_first_second"), split.get("raw_to_reader_first_second")
    if not to_raw or not rest:
        return ""
    waited = ""
    if (once := _p99(row, "latency_ms_once_connected")) is not None:
        waited = (
            f"; counted from when its reader's stream was answered, for the {row.get('written_before_reader_pct')} % "
            f"of tokens written before (Flask-SSE publishes nothing before every reader is there), p99 {once} ms"
        )
    return (
        f"; in each stream's first second, producer → raw write p99 {to_raw['p99']} ms (the worker), raw write → "
        f"reader p99 {rest['p99']} ms (consumer, hub, web){waited}"
    )


def latency_line(row: dict[str, Any], peer: dict[str, Any] | None) -> str:
    """p50 ≤ 15 ms and p99 ≤ 1.5 x Flask-SSE's p99, at 300 streams."""
    p50, p99 = row["latency_ms"]["p50"], row["latency_ms"]["p99"]
    p50_ok = p50 is not None and p50 <= 15
    if peer is None or peer["latency_ms"]["p99"] is None:
        return (
            f"- 300 streams: p50 {p50} ms (≤ 15), p99 {p99} ms (≤ 1.5 x Flask-SSE's p99, and no Flask-SSE figure "
            f"at 300 streams in this run): {NOT_JUDGED}"
        )
    limit = round(1.5 * peer["latency_ms"]["p99"], 2)
    ok = p50_ok and p99 is not None and p99 <= limit
    return (
        f"- 300 streams: p50 {p50} ms (≤ 15), p99 {p99} ms (≤ 1.5 x Flask-SSE's {peer['latency_ms']['p99']} = "
        f"{limit}): {verdict(ok)}{'' if ok else _tail_cause(row, peer, limit) if p50_ok else _saturation(row)}"
    )


def _saturation(row: dict[str, Any]) -> str:
    """A p50 over its bound: whether the step asked more CPU than the machine has (the load client's included)."""
    cpu = row.get("cpu_us_per_token") or {}
    if "pipeline" not in cpu or not row.get("cores"):
        return ""
    offered, machine = row["streams"] * row["rate"], row["cores"]
    cores = (cpu["pipeline"] + cpu.get("load client", 0)) * offered / 1e6
    return (
        f" (measured cause: the step's {offered:g} tokens/s at {cpu['pipeline']} µs of pipeline CPU each, and the load "
        f"client's {cpu.get('load client', 0)}, ask {cores:.2f} cores of this machine's {machine}"
        f"{': it is saturated' if cores >= 0.9 * machine else ''})"
    )


def pipeline_cpu_line(row: dict[str, Any], peer: dict[str, Any] | None) -> str:
    """Pipeline CPU per delivered token at 300 streams no more than Flask-SSE's in the same run."""
    ours = row["cpu_us_per_token"]["pipeline"]
    load = f"300 streams x {row['rate']:g} tokens/s"
    if peer is None:
        return f"- pipeline CPU per delivered token at {load}: {ours} µs (no Flask-SSE run to compare): {NOT_JUDGED}"
    theirs = peer["cpu_us_per_token"]["pipeline"]
    line = (
        f"- pipeline CPU per delivered token at {load}: tokenbridge {ours} µs, Flask-SSE {theirs} µs "
        f"(no more than Flask-SSE's): {verdict(ours <= theirs)}"
    )
    return line if ours <= theirs else line + _cpu_cause(row["cpu_us_per_token"], peer["cpu_us_per_token"])


def _cpu_cause(ours: dict[str, float], theirs: dict[str, float]) -> str:
    """Where a missed CPU target's difference is, process by process."""
    hops = round(ours.get("worker", 0) + ours.get("consumer", 0), 1)
    return (
        f" (measured cause: worker and consumer {hops} µs where Flask-SSE's publisher spends "
        f"{theirs.get('publisher', 0)}, Redis {ours.get('redis', 0)} against its {theirs.get('redis', 0)}; web "
        f"{ours.get('web', 0)} against its {theirs.get('web', 0)})"
    )


def capacity_line(ours: Rows, baseline: Rows) -> str:
    """Capacity at least twice the peer's."""
    mine = capacity(ours)
    if not baseline:
        return (
            f"- capacity (p99 ≤ 100 ms, no gap or duplicate): tokenbridge {mine} streams (≥ 2 x Flask-SSE's, and no "
            f"Flask-SSE run): {NOT_JUDGED}"
        )
    theirs = capacity(baseline)
    line = (
        f"- capacity (p99 ≤ 100 ms, no gap or duplicate): tokenbridge {mine} streams, Flask-SSE {theirs} "
        f"(≥ 2 x {theirs} = {2 * theirs}): {verdict(mine >= 2 * theirs)}"
    )
    if mine >= 2 * theirs or not any(AFTER_FIRST_SECOND in r for r in ours):
        return line
    return line + (
        f" (measured cause: by the p99 of each stream's tokens after its first second, tokenbridge "
        f"{capacity(ours, AFTER_FIRST_SECOND)} streams, Flask-SSE {capacity(baseline, AFTER_FIRST_SECOND)})"
    )


def peer_targets(ours: Rows, baseline: Rows) -> list[str]:
    """The targets set against Flask-SSE in the same run (nothing when tokenbridge's load levels did not run)."""
    if not ours:
        return []
    lines = []
    row, peer = at(ours, 300), at(baseline, 300)
    if row is not None:
        lines += [pipeline_cpu_line(row, peer), latency_line(row, peer)]
    lines.append(capacity_line(ours, baseline))
    return lines


def generation_cpu_line(g: dict[str, Any]) -> str:
    """CPU per generation, all processes together: ≤ 4 ms."""
    per = g["cpu_ms_per_generation"]
    parts = ", ".join(f"{name} {value}" for name, value in per.items() if name != "total")
    complete = g["done"] == g["generations"]
    note = "" if complete else f"; only {g['done']} of {g['generations']} ended with done"
    met = complete and per["total"] <= 4
    return (
        f"- CPU per generation (all processes, {g['generations']} empty answers read to done): {per['total']} ms "
        f"({parts}) (≤ 4){note}: {verdict(met)}{'' if met else _generation_cause(g)}"
    )


# Round trips to Redis that only Celery (kombu's Redis transport) makes for a task on a single Redis: web's publish,
# the worker's fetch, and one MULTI/EXEC for its unacknowledged-message bookkeeping at delivery, one at the ack.
_CELERY_ROUND_TRIPS = ("lpush", "brpop", "exec")


def _generation_cause(g: dict[str, Any]) -> str:
    """What the figures of this run say a generation's CPU is made of (older reports lack the measurements)."""
    commands, bare = g.get("redis_commands_per_generation"), g.get("bare_request_web_ms")
    if not commands or not bare:
        return ""
    per = g["cpu_ms_per_generation"]
    celery = sum(commands.get(name, 0.0) for name in _CELERY_ROUND_TRIPS)
    requests = bare["kept_alive"] + bare["new_connection"]
    return (
        f" (measured cause: web {per['web']} ms holds two HTTP requests, {requests:.2f} ms for two bare ones"
        f" ({bare['kept_alive']} kept alive, {bare['new_connection']} on a new connection), then the submission"
        f" and the reader's catch-up; Redis {per['redis']} ms runs {sum(commands.values()):.1f} commands per"
        f" generation, scripts' own included ({commands.get('evalsha', 0)} scripts); Celery adds {celery:.1f} round"
        f" trips of its own ({', '.join(f'{n.upper()} {commands[n]}' for n in _CELERY_ROUND_TRIPS if n in commands)}),"
        f" and the worker's {per['worker']} ms is Celery's task machinery around one claim and one write)"
    )


def burst_line(b: dict[str, Any]) -> str:
    """A burst of submissions: first token p50 ≤ 1.5 s, from each POST's start."""
    post, start = b["ttft_from_post_s"], b["ttft_from_burst_start_s"]
    complete = b["with_first_token"] == b["submissions"]
    note = "" if complete else f"; only {b['with_first_token']} of {b['submissions']} got a first token"
    ok = complete and post["p50"] is not None and post["p50"] <= 1.5
    return (
        f"- burst of {b['submissions']} submissions: first token p50 {post['p50']} s from each POST's start (≤ 1.5; "
        f"p99 {post['p99']} s; from the burst's start p50 {start['p50']} s, p99 {start['p99']} s){note}: {verdict(ok)}"
    )


def ws_line(w: dict[str, Any]) -> str:
    """Web CPU per event over WebSocket no more than 1.2 x over SSE."""
    sse, ws, ratio = w["sse"], w["ws"], w["ws_over_sse"]
    complete = sse["done"] == w["readers"] and ws["done"] == w["readers"]
    note = "" if complete else f"; done: SSE {sse['done']}, WebSocket {ws['done']} of {w['readers']}"
    ok = complete and ratio is not None and ratio <= 1.2
    rounds = ""
    if not ok and sse.get("each_round_us_per_event"):
        rounds = (
            f" (measured cause: each round, SSE {sse['each_round_us_per_event']} µs, WebSocket "
            f"{ws['each_round_us_per_event']} µs)"
        )
    return (
        f"- web CPU per event, {w['readers']} readers x {w['tokens']} tokens: WebSocket {ws['web_cpu_us_per_event']} "
        f"µs, SSE {sse['web_cpu_us_per_event']} µs = {ratio} x (≤ 1.2 x){note}: {verdict(ok)}{rounds}"
    )


def memory_lines(m: dict[str, Any]) -> list[str]:
    """Redis memory per token: ≤ 150 bytes right after; after the resume window, ≤ the text + 1 KB per answer."""
    complete = m["accepted"] == m["answers"] and m["tokens"] == m["answers"] * m["tokens_per_answer"]
    note = "" if complete else f"; {m['tokens']} tokens of {m['answers'] * m['tokens_per_answer']} counted"
    if m["finished_after_s"] > m["resume_window_s"]:
        note += (
            f"; the answers took {m['finished_after_s']} s, longer than the {m['resume_window_s']:g} s resume "
            "window, so the first ones' window may have passed before this reading"
        )
    allowance = m["allowance_after_window"]
    after_ok = complete and m["bytes_after_window"] <= allowance
    return [
        f"- Redis memory right after {m['answers']} answers x {m['tokens_per_answer']} tokens: "
        f"{m['bytes_per_token']} bytes per token (≤ 150){note}: {verdict(complete and m['bytes_per_token'] <= 150)}",
        f"- Redis memory {m['resume_window_s']:g} s + 3 s after the resume window: {m['bytes_after_window']} bytes = "
        f"{m['bytes_per_token_after_window']} per token (≤ text {m['text_bytes']} bytes + 1 KB x {m['accepted']} = "
        f"{allowance} bytes, {allowance / max(1, m['tokens']):.1f} per token): "
        f"{verdict(after_ok)}{'' if after_ok else _memory_cause(m)}",
    ]


def _memory_cause(m: dict[str, Any]) -> str:
    """What a missed reading after the window holds: the keys left (by ``MEMORY USAGE``), and the rest."""
    keys = m.get("key_bytes_after_window")
    if keys is None:
        return ""
    rest = m["bytes_after_window"] - keys
    overhead = (m.get("deltas_after_window") or {}).get("used_memory_overhead")
    return (
        f" (measured cause: the keys left hold {keys} bytes, {keys / max(1, m['tokens']):.1f} per token"
        f"{', within it' if keys <= m['allowance_after_window'] else ''}; the other {rest} bytes belong to no key"
        f"{f' ({overhead} of them in used_memory_overhead: key tables, buffers)' if overhead is not None else ''})"
    )


def upstream_line(u: dict[str, Any]) -> str:
    """No new upstream connection per generation: handshakes ≤ the generations running at once."""
    complete = u["done"] == u["generations"]
    note = "" if complete else f"; only {u['done']} of {u['generations']} ended with done: {u['errors'][:1]}"
    return (
        f"- upstream TLS handshakes, {u['generations']} generations ({u['concurrency']} at a time, the upstream keeps "
        f"connections alive): {u['handshakes']} = {u['handshakes_per_generation']} per generation "
        f"(≤ {u['concurrency']} in all){note}: {verdict(complete and u['handshakes'] <= u['concurrency'])}"
    )


def cost_targets(extra: dict[str, Any]) -> list[str]:
    """One line per cost target whose measurement ran."""
    lines = []
    if "generation_cpu" in extra:
        lines.append(generation_cpu_line(extra["generation_cpu"]))
    if "burst" in extra:
        lines.append(burst_line(extra["burst"]))
    if "ws_vs_sse" in extra:
        lines.append(ws_line(extra["ws_vs_sse"]))
    if "memory" in extra:
        lines += memory_lines(extra["memory"])
    if "upstream_tls" in extra:
        lines.append(upstream_line(extra["upstream_tls"]))
    return lines


# -- the cost sections -------------------------------------------------------------------------------


def _quantile_row(name: str, q: dict[str, Any]) -> str:
    return f"| {name} | {q['p50']} | {q['p90']} | {q['p99']} | {q['max']} |"


def _generation_section(g: dict[str, Any]) -> str:
    rows = "\n".join(f"| {name} | {value} |" for name, value in g["cpu_ms_per_generation"].items())
    return f"""### CPU per generation

{g["generations"]} generations with an empty answer (`{json.dumps(g["request"])}`), {g["concurrency"]} at a time, each
POSTed and read over SSE to its end ({g["done"]} ended with `done`) in {g["elapsed_s"]} s. CPU of each process tree,
before and after, divided by the generations. The stack idles at {g["idle_cpu_ms_per_s"]} ms of CPU a second
(heartbeats, presence), about {g["idle_cpu_ms_per_generation"]} ms of each generation's total (not subtracted).
Errors: {g["errors"] or "none"}.

| process | CPU ms per generation |
| --- | --- |
{rows}
{_generation_parts(g)}"""


def _generation_parts(g: dict[str, Any]) -> str:
    """web's CPU for a bare request and the Redis commands of a generation (reports from 2026-12-07-3 on)."""
    commands, bare = g.get("redis_commands_per_generation"), g.get("bare_request_web_ms")
    if not commands or not bare:
        return ""
    rows = "\n".join(f"| {name.upper()} | {calls} |" for name, calls in commands.items())
    return f"""
A bare `GET /healthz` costs web {bare["kept_alive"]} ms of CPU on a kept-alive connection (as the POSTs here go) and
{bare["new_connection"]} ms on a new connection (as each reader here connects): a generation makes one of each.

Redis commands per generation (`INFO commandstats`; a script counts as `EVALSHA` and each command it runs counts
too; heartbeats and presence of the run included):

| command | calls per generation |
| --- | --- |
{rows}
"""


def _burst_section(b: dict[str, Any]) -> str:
    return f"""### A burst of submissions

{b["submissions"]} submissions of `synthetic` ({b["tokens"]} tokens at {b["rate"]:g} tokens/s), POSTed
{b["concurrency"]} at a time, each read by an SSE client from the moment its POST returned. {b["accepted"]}
accepted, the last {b["all_accepted_after_s"]} s after the first POST; {b["with_first_token"]} got a first token,
{b["done"]} ended with `done`; gaps {b["gaps"]}, duplicates {b["duplicates"]}. CPU seconds over the burst: {b["cpu_s"]}.
Errors: {b["errors"] or "none"}.

| time to first token (s), from | p50 | p90 | p99 | max |
| --- | --- | --- | --- | --- |
{_quantile_row("the burst's start (first POST)", b["ttft_from_burst_start_s"])}
{_quantile_row("each POST's start", b["ttft_from_post_s"])}
{_quantile_row("POST → 202 (ms)", b["post_ms"])}
"""


def _ws_section(w: dict[str, Any]) -> str:
    rows = "\n".join(
        f"| {name} | {r['web_cpu_us_per_event']} | {r.get('each_round_us_per_event', '')} | {r['measured_events']} of "
        f"{r['events']} | {r['measured_s']} | {r['done']} | {r['gaps']} | {r['duplicates']} | {r['close_codes']} |"
        for name, r in (("SSE", w["sse"]), ("WebSocket", w["ws"]))
    )
    rounds = w.get("rounds", 1)
    return f"""### WebSocket vs SSE

{w["readers"]} readers x {w["tokens"]} tokens at {w["rate"]:g} tokens/s on one web process, {rounds} round(s) over
each transport (SSE, WebSocket, WebSocket, SSE: a drift of the host's speed weighs on both alike). Web CPU is its
gunicorn worker's, in each round from the moment every reader had its first event to the last one's end.

| transport | web CPU µs per event | each round | events measured | seconds | done | gaps | dups | close codes |
| --- | --- | --- | --- | --- | --- | --- | --- | --- |
{rows}

Errors: SSE {w["sse"]["errors"] or "none"}, WebSocket {w["ws"]["errors"] or "none"}.
"""


def _memory_section(m: dict[str, Any]) -> str:
    per_token = max(1, m["tokens"])
    names = sorted(set(m["sample_keys"]) | set(m["sample_keys_after_window"]))
    keys = "\n".join(
        f"| {n} | {m['sample_keys'].get(n, '—')} | {m['sample_keys_after_window'].get(n, '—')} |" for n in names
    )
    names = list(dict.fromkeys([*m["families"], *m["families_after_window"]]))
    families = "\n".join(
        f"| `{n}` | {m['families'].get(n, 0)} | {m['families_after_window'].get(n, 0)} |" for n in names
    )
    info = "\n".join(f"| {n} | {v} | {m['deltas_after_window'].get(n)} |" for n, v in m["deltas"].items())
    return f"""### Redis memory per token

{m["answers"]} answers x {m["tokens_per_answer"]} tokens of unpaced `synthetic` in {m["sessions"]} sessions, on a
stack of its own with a resume window of {m["resume_window_s"]:g} s (`REDIS_RESUME_WINDOW_MS`), after a warm-up batch
of the same shape (its window passed before the first reading); they took {m["finished_after_s"]} s from the first
POST. Deltas from before the answers, each read after `MEMORY PURGE` and a second; {m["tokens"]} tokens,
{m["text_bytes"]} bytes of text.

| reading | bytes | per token |
| --- | --- | --- |
| `used_memory`, right after | {m["bytes"]} | {m["bytes_per_token"]} |
| `used_memory`, highest while they ran (not purged) | {m["used_memory_peak"] - m["used_memory_before"]} | — |
| `used_memory`, after the window + 3 s | {m["bytes_after_window"]} | {m["bytes_per_token_after_window"]} |
| keys (`MEMORY USAGE` of every key), right after | {m["key_bytes"]} | {m["key_bytes"] / per_token:.1f} |
| keys, after the window + 3 s | {m["key_bytes_after_window"]} | {m["key_bytes_after_window"] / per_token:.1f} |
| the text + 1 KB per answer | {m["allowance_after_window"]} | {m["allowance_after_window"] / per_token:.1f} |

INFO memory, deltas:

| field | right after | after the window |
| --- | --- | --- |
{info}

Keys by family (`MEMORY USAGE`, deltas in bytes):

| family | right after | after the window |
| --- | --- | --- |
{families}

One answer's keys and its session's (`MEMORY USAGE`, bytes):

| key | right after | after the window |
| --- | --- | --- |
{keys}
"""


def _upstream_section(u: dict[str, Any]) -> str:
    return f"""### Connections to the model API

{u["generations"]} generations of a local OpenAI-compatible upstream over TLS (self-signed certificate, connections
kept alive), {u["concurrency"]} at a time: {u["connections"]} TCP connections accepted, {u["handshakes"]} TLS
handshakes completed ({u["failed_handshakes"]} failed), {u["requests"]} requests; {u["done"]} ended with `done`,
{u["tokens"]} of {u["expected_tokens"]} tokens. Errors: {u["errors"] or "none"}.
"""


def tracing_line(t: dict[str, Any]) -> str:
    off, on = t["cpu_us_per_token"]["off"], t["cpu_us_per_token"]["on"]
    return (
        f"tracing on: pipeline {on['pipeline']} µs per token against {off['pipeline']} off "
        f"({t['added_us_per_token']:+} µs); p99 {t['p99_ms']['on']} ms against {t['p99_ms']['off']}; "
        f"{t['exported_bytes_per_token']} B of OTLP per token"
    )


def _tracing_section(t: dict[str, Any]) -> str:
    off, on = t["cpu_us_per_token"]["off"], t["cpu_us_per_token"]["on"]
    names = [name for name in ("web", "worker", "consumer", "redis", "pipeline") if name in off]
    rows = "\n".join(f"| {name} | {off[name]} | {on[name]} | {round(on[name] - off[name], 1):+} |" for name in names)
    return f"""### Tracing

{t["streams"]} streams x 20 tokens/s on two stacks, one with OpenTelemetry off and one exporting every span over
OTLP/HTTP to a local sink (one trace per generation: docs/operations.md), {t["rounds"]} steps each, alternated;
median CPU µs per delivered token. {tracing_line(t)}; {t["exports"]} exports.

| process | off | on | added |
| --- | --- | --- | --- |
{rows}
"""


def costs_section(extra: dict[str, Any]) -> str:
    """The measurements of the costs that ran, as Markdown."""
    sections: list[tuple[str, Callable[[dict[str, Any]], str]]] = [
        ("generation_cpu", _generation_section),
        ("burst", _burst_section),
        ("ws_vs_sse", _ws_section),
        ("memory", _memory_section),
        ("upstream_tls", _upstream_section),
        ("tracing", _tracing_section),
    ]
    return "\n".join(render(extra[name]) for name, render in sections if name in extra)


# -- before and after --------------------------------------------------------------------------------


def _dig(data: Any, *path: str) -> Any:
    for name in path:
        if not isinstance(data, dict) or name not in data:
            return None
        data = data[name]
    return data


def figures(result: dict[str, Any]) -> dict[str, Any]:
    """The headline figures of one run's JSON (``{"ours", "baseline", "extra"}``), by label; None when absent."""
    extra = result.get("extra") or {}
    row = at(result.get("ours") or [], 300) or {}
    peer = at(result.get("baseline") or [], 300) or {}
    found = {
        # The machine's speed: the same code runs slower on a slower (or busier) host.
        YARDSTICK: _dig(result, "machine", "yardstick_ms"),
        "p50 at 300 streams (ms)": _dig(row, "latency_ms", "p50"),
        "p99 at 300 streams (ms)": _dig(row, "latency_ms", "p99"),
        "pipeline CPU per token at 300 streams (µs)": _dig(row, "cpu_us_per_token", "pipeline"),
        "Flask-SSE pipeline CPU per token at 300 streams (µs)": _dig(peer, "cpu_us_per_token", "pipeline"),
        "capacity (streams)": capacity(result["ours"]) if result.get("ours") else None,
    }
    for name in ("total", "web", "worker", "consumer", "redis"):
        found[f"CPU per generation, {name} (ms)"] = _dig(extra, "generation_cpu", "cpu_ms_per_generation", name)
    found |= {
        "burst: first token p50 from each POST (s)": _dig(extra, "burst", "ttft_from_post_s", "p50"),
        "burst: first token p99 from each POST (s)": _dig(extra, "burst", "ttft_from_post_s", "p99"),
        "burst: first token p50 from the burst's start (s)": _dig(extra, "burst", "ttft_from_burst_start_s", "p50"),
        "web CPU per event, SSE (µs)": _dig(extra, "ws_vs_sse", "sse", "web_cpu_us_per_event"),
        "web CPU per event, WebSocket (µs)": _dig(extra, "ws_vs_sse", "ws", "web_cpu_us_per_event"),
        "WebSocket / SSE": _dig(extra, "ws_vs_sse", "ws_over_sse"),
        "Redis bytes per token, right after": _dig(extra, "memory", "bytes_per_token"),
        "Redis bytes per token, after the resume window": _dig(extra, "memory", "bytes_per_token_after_window"),
        "upstream TLS handshakes per generation": _dig(extra, "upstream_tls", "handshakes_per_generation"),
    }
    return found


def before_after(earlier: dict[str, Any], now: dict[str, Any]) -> str:
    """A table of every headline figure the earlier run has, next to this run's ("—" where this one lacks it)."""
    before, after = figures(earlier), figures(now)
    rows = [
        f"| {label} | {'—' if value is None else value} | {'—' if after[label] is None else after[label]} |"
        for label, value in before.items()
        if value is not None or (label == YARDSTICK and after[label] is not None)
    ]
    if not rows:
        return ""
    return "\n".join(["| figure | before | now |", "| --- | --- | --- |", *rows])

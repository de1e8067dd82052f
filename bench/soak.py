"""``make soak``: the whole stack under moderate, steady load for an hour; does any process's memory grow?

The stack runs as the Procfile runs it (web under gunicorn gevent, Celery worker, consumer) on an embedded
Redis. SOAK_STREAMS generations run at once at SOAK_RATE tokens/s; each is replaced by a new one as it ends.
Every generation has one reader: most over SSE, some over WebSocket, some dropping their connection midway
and resuming from the last event id. Every SOAK_SAMPLE_S seconds the RSS of every process (each gunicorn
worker, the Celery worker and any children, the consumer, Redis) is recorded with Redis's ``used_memory`` and
key count. Growth is judged after a warm-up: a least-squares slope, and the growth it adds up to.

Writes ``bench/results/soak-<date>.md`` (table per sample, verdict per process), its PNG plot and the raw
samples as JSON (written after every sample, so an interrupted run keeps what it measured;
``python -m bench.soak --report <json>`` renders the report again).

Environment: SOAK_MINUTES (60), SOAK_STREAMS (50), SOAK_RATE (20 tokens/s), SOAK_TOKENS (200 per generation),
SOAK_WARMUP_MINUTES (16: the longest a generation's keys live, plus a minute), SOAK_SAMPLE_S (60),
SOAK_NAME (soak-<date>).
"""

from __future__ import annotations

import asyncio
import datetime
import json
import math
import os
import random
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncGenerator
from contextlib import aclosing, suppress
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, CloseConnection, Ping, RejectConnection, Request, TextMessage

from bridge.embedded import EmbeddedRedis
from bridge.settings import Settings
from tests.support.stack import API_KEY, Stack, build_stack

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
TERMINAL = {"done", "error", "cancelled"}
SHELLS = {"sh", "dash", "bash"}
FINDINGS = "\n## Findings\n"

# Production settings where the test stack's differ (keep-alives, heartbeats), no limits in the way, quiet
# logs, two gunicorn workers. Finished generations are kept 5 minutes instead of a day: with the default,
# Redis holds every generation of the hour by design and its memory could not level off within the run. The
# longest and the queue wait a generation may have are cut to 2 minutes (these take 10 s): with them a
# session's owner key, the longest-lived key of a generation, lives 15 minutes instead of 31 (see
# ``key_lifetime_minutes``), and Redis reaches its steady state sooner.
STACK_ENV: dict[str, str] = {
    "RATE_LIMIT": "",
    "MAX_RUNNING_PER_KEY": "0",
    "WEB_CONCURRENCY": "2",
    "CELERY_CONCURRENCY": "200",
    "LOG_LEVEL": "WARNING",
    "SSE_KEEPALIVE_S": "15",
    "CONSUMER_HEARTBEAT_MS": "2000",
    "CONSUMER_CLAIM_IDLE_MS": "10000",
    "REDIS_STREAM_RETENTION_MS": "300000",
    "GENERATION_MAX_DURATION_S": "120",
    "QUEUE_TIMEOUT_S": "120",
}


def key_lifetime_minutes(env: dict[str, str]) -> float:
    """How long the longest-lived key of a generation outlives its creation: its session's owner key
    (``Settings.session_ttl_ms``). Until then Redis still gains keys under a steady load: the warm-up lasts that
    long."""
    settings = Settings(**{name.lower(): value for name, value in env.items() if name.lower() in Settings.model_fields})
    return settings.session_ttl_ms / 60_000


# The warm-up by default: until Redis holds as many keys as it will (above), and a minute more.
WARMUP_MINUTES = math.ceil(key_lifetime_minutes(STACK_ENV)) + 1
# A pooled connection is dropped after this long idle: well before web closes it (WEB_KEEPALIVE_S), so that a
# request never goes out on a connection the server is closing (a client-side error, not the stack's).
KEEPALIVE_S = 1.0
# Share of readers on WebSocket, and share that drop their connection midway and resume.
WS_SHARE = 0.25
RESUME_SHARE = 0.2


@dataclass
class Config:
    minutes: float = 60
    streams: int = 50
    rate: float = 20
    tokens: int = 200
    warmup_minutes: float = WARMUP_MINUTES
    sample_s: float = 60
    name: str = ""

    @classmethod
    def from_env(cls) -> Config:
        env = os.environ.get
        return cls(
            minutes=float(env("SOAK_MINUTES", "60")),
            streams=int(env("SOAK_STREAMS", "50")),
            rate=float(env("SOAK_RATE", "20")),
            tokens=int(env("SOAK_TOKENS", "200")),
            warmup_minutes=float(env("SOAK_WARMUP_MINUTES", str(WARMUP_MINUTES))),
            sample_s=float(env("SOAK_SAMPLE_S", "60")),
            name=env("SOAK_NAME") or f"soak-{datetime.datetime.now(datetime.UTC):%Y-%m-%d}",
        )


@dataclass
class Tally:
    """What the readers saw, across the run."""

    generations: int = 0
    tokens: int = 0
    sse_readers: int = 0
    ws_readers: int = 0
    resumes: int = 0
    gaps: int = 0
    duplicates: int = 0
    short: int = 0  # ended `done` with fewer tokens than asked for
    terminals: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    error_log: list[str] = field(default_factory=list)  # the first ones: when, where, what


@dataclass
class Reading:
    """One reader's position in one generation: carried across a resume."""

    last_id: str | None = None
    next_seq: int = 0
    tokens: int = 0
    terminal: str | None = None


# -- readers ---------------------------------------------------------------------------------------------


def _take(reading: Reading, tally: Tally, event: str, entry_id: str | None, data: dict[str, Any]) -> None:
    seq = int(data.get("seq", reading.next_seq))
    if seq < reading.next_seq:
        tally.duplicates += 1
        return
    tally.gaps += seq - reading.next_seq
    reading.next_seq = seq + 1
    reading.last_id = entry_id or reading.last_id
    if event == "token":
        reading.tokens += 1
        tally.tokens += 1
    elif event == "restart":
        reading.tokens = 0
    elif event in TERMINAL:
        reading.terminal = event


async def _sse(client: httpx.AsyncClient, path: str, reading: Reading, tally: Tally, cut_after: int | None) -> None:
    """Read SSE until the terminal event, or until ``cut_after`` tokens (then drop the connection)."""
    headers = {"Last-Event-ID": reading.last_id} if reading.last_id else {}
    async with client.stream("GET", path, headers=headers) as response:
        if response.status_code != 200:
            raise ValueError(f"SSE status {response.status_code}")
        event, entry_id, data = "message", None, ""
        async for line in response.aiter_lines():
            if line.startswith("event:"):
                event = line[6:].strip()
            elif line.startswith("id:"):
                entry_id = line[3:].strip()
            elif line.startswith("data:"):
                data = line[5:].strip()
            elif not line and data:
                _take(reading, tally, event, entry_id, json.loads(data))
                event, entry_id, data = "message", None, ""
                if reading.terminal or (cut_after is not None and reading.tokens >= cut_after):
                    return


async def _ws_messages(host: str, port: int, target: str) -> AsyncGenerator[dict[str, Any]]:
    """The JSON messages of one WebSocket connection, until the server closes it."""
    reader, writer = await asyncio.open_connection(host, port)
    ws = WSConnection(ConnectionType.CLIENT)
    try:
        auth = [(b"Authorization", f"Bearer {API_KEY}".encode())]
        writer.write(ws.send(Request(host=f"{host}:{port}", target=target, extra_headers=auth)))
        text = ""
        while True:
            data = await reader.read(65536)
            ws.receive_data(data or None)
            for item in ws.events():
                if isinstance(item, RejectConnection):
                    raise ValueError(f"WebSocket rejected with {item.status_code}")
                if isinstance(item, TextMessage):
                    text += item.data
                    if item.message_finished:
                        yield json.loads(text)
                        text = ""
                elif isinstance(item, Ping):
                    writer.write(ws.send(item.response()))
                elif isinstance(item, CloseConnection):
                    return
                elif not isinstance(item, AcceptConnection):
                    continue
            if not data:
                return
    finally:
        writer.close()


async def _ws(base: httpx.URL, path: str, reading: Reading, tally: Tally, cut_after: int | None) -> None:
    target = path + (f"?last_event_id={reading.last_id}" if reading.last_id else "")
    async with aclosing(_ws_messages(base.host, base.port or 80, target)) as messages:
        async for message in messages:
            _take(reading, tally, message["event"], message.get("id"), message.get("data", {}))
            if reading.terminal or (cut_after is not None and reading.tokens >= cut_after):
                return


async def _one_generation(
    client: httpx.AsyncClient, config: Config, tally: Tally, rng: random.Random, where: list[str]
) -> None:
    """Create a generation and read it to its end; ``where`` says which step it is at, for error reports."""
    where[:] = ["create"]
    body = {
        "model": "synthetic",
        "prompt": "soak",
        "max_tokens": config.tokens,
        "options": {"tokens_per_second": config.rate},
    }
    response = await client.post("/v1/generations", json=body)
    if response.status_code != 202:
        raise ValueError(f"create status {response.status_code}")
    created = response.json()
    use_ws = rng.random() < WS_SHARE
    cut_after = rng.randint(1, config.tokens - 1) if config.tokens > 1 and rng.random() < RESUME_SHARE else None
    reading = Reading()
    if use_ws:
        tally.ws_readers += 1
    else:
        tally.sse_readers += 1
    while reading.terminal is None:
        where[:] = [("WebSocket" if use_ws else "SSE") + (" resume" if reading.last_id else "")]
        if use_ws:
            await _ws(client.base_url, created["ws_url"], reading, tally, cut_after)
        else:
            await _sse(client, created["events_url"], reading, tally, cut_after)
        if reading.terminal is None:
            if cut_after is None:
                raise ValueError("connection ended before the terminal event")
            tally.resumes += 1
            cut_after = None
    tally.generations += 1
    tally.terminals[reading.terminal] += 1
    if reading.terminal == "done" and reading.tokens != config.tokens:
        tally.short += 1


async def _slot(
    client: httpx.AsyncClient, config: Config, tally: Tally, started: float, deadline: float, seed: int
) -> None:
    """One of the concurrent generations: as soon as one ends, the next starts."""
    rng = random.Random(seed)
    where: list[str] = []
    # A staggered start, so that generations do not all end (and restart) together.
    await asyncio.sleep(rng.random() * config.tokens / config.rate)
    while time.monotonic() < deadline:
        try:
            timeout_s = config.tokens / config.rate + 60
            await asyncio.wait_for(_one_generation(client, config, tally, rng, where), timeout_s)
        except Exception as exc:  # any failure of one reader is counted, and its slot goes on
            tally.errors[type(exc).__name__ + (f": {exc}" if isinstance(exc, ValueError) else "")] += 1
            if len(tally.error_log) < 50:
                minute = (time.monotonic() - started) / 60
                tally.error_log.append(f"{minute:.1f} min, {where[0]}: {type(exc).__name__}: {str(exc)[:200]}")
            await asyncio.sleep(1)


# -- memory ----------------------------------------------------------------------------------------------


class Sampler:
    """The RSS of every process of the stack, named once by the first sample that sees it."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.labels: dict[int, str] = {}
        self.redis = stack.client()

    def _label(self, group: str, process: psutil.Process, is_root: bool) -> str:
        if process.pid not in self.labels:
            taken = sum(1 for label in self.labels.values() if label.startswith(f"{group} "))
            # A gunicorn master's children are its workers; anything else's are plain children.
            kind = "worker" if group == "web" else "child"
            self.labels[process.pid] = group if is_root else f"{group} {kind} {taken + 1}"
        return self.labels[process.pid]

    def rss_kb(self) -> tuple[dict[str, int], dict[str, int]]:
        """RSS and open file descriptors (a leaked socket shows there first) of every process."""
        out: dict[str, int] = {}
        fds: dict[str, int] = {}
        for group, shell in self.stack.processes.items():
            with suppress(psutil.NoSuchProcess):
                top = psutil.Process(shell.pid)
                members = [p for p in [top, *top.children(recursive=True)] if p.name() not in SHELLS]
                for process in members:
                    with suppress(psutil.NoSuchProcess):
                        is_root = process.ppid() not in {m.pid for m in members}
                        label = self._label(group, process, is_root)
                        out[label] = process.memory_info().rss // 1024
                        fds[label] = process.num_fds()
        assert isinstance(self.stack.redis, EmbeddedRedis) and self.stack.redis.process is not None
        redis_process = psutil.Process(self.stack.redis.process.pid)
        out["redis"] = redis_process.memory_info().rss // 1024
        fds["redis"] = redis_process.num_fds()
        return out, fds

    def sample(self, minute: float, tally: Tally) -> dict[str, Any]:
        memory: dict[str, Any] = self.redis.info("memory")
        rss, fds = self.rss_kb()
        return {
            "minute": round(minute, 2),
            "rss_kb": rss,
            "fds": fds,
            "redis_clients": int(self.redis.info("clients")["connected_clients"]),
            "redis_used_memory_kb": int(memory["used_memory"]) // 1024,
            "redis_keys": int(self.redis.dbsize()),
            "generations": tally.generations,
            "tokens": tally.tokens,
            "errors": sum(tally.errors.values()),
        }


# -- the run ---------------------------------------------------------------------------------------------


async def _drive(stack: Stack, config: Config, on_sample: Any) -> Tally:
    tally = Tally()
    sampler = Sampler(stack)
    started = time.monotonic()
    deadline = started + config.minutes * 60
    limits = httpx.Limits(
        max_connections=config.streams * 2 + 10, max_keepalive_connections=config.streams, keepalive_expiry=KEEPALIVE_S
    )
    async with httpx.AsyncClient(
        base_url=stack.base_url, headers=stack.headers, timeout=httpx.Timeout(30), limits=limits
    ) as client:
        slots = [
            asyncio.create_task(_slot(client, config, tally, started, deadline, seed)) for seed in range(config.streams)
        ]
        while True:
            on_sample(sampler.sample((time.monotonic() - started) / 60, tally), tally)
            if time.monotonic() >= deadline:
                break
            await asyncio.sleep(min(config.sample_s, max(0.0, deadline - time.monotonic())))
        await asyncio.gather(*slots)
        # Once the last generations have ended: what the stack holds at rest.
        on_sample({**sampler.sample((time.monotonic() - started) / 60, tally), "at_rest": True}, tally)
    sampler.redis.close()
    return tally


def run(config: Config, out_dir: Path = RESULTS) -> Path:
    """Run the soak and write its report; returns the report's path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    raw_path = out_dir / f"{config.name}.json"
    samples: list[dict[str, Any]] = []
    logs = ROOT / "test-artifacts" / f"{config.name}-logs"
    stack = build_stack(Path(tempfile.mkdtemp(prefix="soak-redis-")), logs)
    stack.env.update(STACK_ENV)

    def on_sample(sample: dict[str, Any], tally: Tally) -> None:
        samples.append(sample)
        raw_path.write_text(json.dumps({"config": asdict(config), "tally": _tally_json(tally), "samples": samples}))
        print(
            f"  {sample['minute']:6.1f} min: {sample['generations']} generations, {sample['tokens']} tokens, "
            f"{sample['errors']} errors, RSS MB "
            + ", ".join(f"{k} {v / 1024:.1f}" for k, v in sample["rss_kb"].items())
            + f", Redis used {sample['redis_used_memory_kb'] / 1024:.1f} MB, {sample['redis_keys']} keys",
            flush=True,
        )

    try:
        for name in ("web", "worker", "consumer"):
            stack.start(name)
        stack.wait_ready()
        asyncio.run(_drive(stack, config, on_sample))
    finally:
        stack.stop_all()
        stack.stop_servers()
    return write_report(raw_path)


def _tally_json(tally: Tally) -> dict[str, Any]:
    return {**asdict(tally), "terminals": dict(tally.terminals), "errors": dict(tally.errors)}


# -- the report ------------------------------------------------------------------------------------------


def slope_per_minute(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of ``points`` (minute, value)."""
    n = len(points)
    if n < 2:
        return 0.0
    mean_x = sum(x for x, _ in points) / n
    mean_y = sum(y for _, y in points) / n
    spread = sum((x - mean_x) ** 2 for x, _ in points)
    return sum((x - mean_x) * (y - mean_y) for x, y in points) / spread if spread else 0.0


def tolerance_kb(start_kb: float) -> float:
    """Growth after warm-up still called flat: 2 MB or 3 % of the value at the end of warm-up, the larger."""
    return max(2048.0, 0.03 * start_kb)


def verdicts(samples: list[dict[str, Any]], warmup_minutes: float) -> list[dict[str, Any]]:
    """Per series (each process's RSS, Redis's used_memory): slope and growth after warm-up, and the verdict."""
    series: dict[str, list[tuple[float, float]]] = {}
    for sample in samples:
        for label, kb in sample["rss_kb"].items():
            series.setdefault(f"{label} RSS", []).append((sample["minute"], kb))
        series.setdefault("redis used_memory", []).append((sample["minute"], sample["redis_used_memory_kb"]))
    # The sample taken at rest, after the load, says what stays but is not part of the trend.
    end = max(s["minute"] for s in samples if not s.get("at_rest"))
    rows: list[dict[str, Any]] = []
    for name, points in series.items():
        after = [(x, y) for x, y in points if warmup_minutes <= x <= end]
        if len(after) < 2:
            rows.append({"series": name, "verdict": "too few samples after warm-up"})
            continue
        slope = slope_per_minute(after)
        # A leak keeps its pace to the end; the tail of a warm-up (a cache or a TTL filling up) slows down.
        middle = (after[0][0] + after[-1][0]) / 2
        last_half = slope_per_minute([(x, y) for x, y in after if x >= middle])
        growth = slope * (after[-1][0] - after[0][0])
        tolerance = tolerance_kb(after[0][1])
        verdict = "flat" if abs(growth) <= tolerance else ("GROWS" if growth > 0 else "shrinks")
        rows.append(
            {
                "series": name,
                "start_kb": after[0][1],
                "end_kb": after[-1][1],
                "slope_kb_per_min": round(slope, 1),
                "last_half_slope_kb_per_min": round(last_half, 1),
                "growth_kb": round(growth),
                "tolerance_kb": round(tolerance),
                "verdict": verdict,
            }
        )
    return rows


def _plot(samples: list[dict[str, Any]], warmup_minutes: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (top, bottom) = plt.subplots(2, 1, figsize=(9, 7), sharex=True, height_ratios=[2, 1])
    labels = list(dict.fromkeys(label for s in samples for label in s["rss_kb"]))
    for label in labels:
        points = [(s["minute"], s["rss_kb"][label] / 1024) for s in samples if label in s["rss_kb"]]
        top.plot([x for x, _ in points], [y for _, y in points], marker=".", label=label)
    top.set_ylabel("RSS (MB)")
    top.legend(fontsize="small", ncol=2)
    minutes = [s["minute"] for s in samples]
    bottom.plot(minutes, [s["redis_used_memory_kb"] / 1024 for s in samples], color="tab:red", marker=".")
    bottom.set_ylabel("Redis used_memory (MB)", color="tab:red")
    keys = bottom.twinx()
    keys.plot(minutes, [s["redis_keys"] for s in samples], color="tab:gray", linestyle="--")
    keys.set_ylabel("Redis keys", color="tab:gray")
    bottom.set_xlabel("minutes")
    for axis in (top, bottom):
        axis.axvline(warmup_minutes, color="black", linestyle=":", linewidth=1)
        axis.grid(True, alpha=0.3)
    top.set_title("Memory under steady load (dotted line: end of warm-up)")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


# Long: mostly the report's Markdown template.
def write_report(raw_path: Path) -> Path:
    raw = json.loads(raw_path.read_text())
    config, tally, samples = raw["config"], raw["tally"], raw["samples"]
    plot = raw_path.with_suffix(".png")
    _plot(samples, config["warmup_minutes"], plot)
    rows = verdicts(samples, config["warmup_minutes"])
    verdict_table = [
        "| series | after warm-up | end of load | slope KB/min | growth KB | tolerance KB | verdict "
        "| slope in the last half KB/min |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        if "slope_kb_per_min" not in row:
            verdict_table.append(f"| {row['series']} | | | | | | {row['verdict']} | |")
            continue
        verdict_table.append(
            f"| {row['series']} | {row['start_kb'] / 1024:.1f} MB | {row['end_kb'] / 1024:.1f} MB | "
            f"{row['slope_kb_per_min']} | {row['growth_kb']} | {row['tolerance_kb']} | {row['verdict']} | "
            f"{row['last_half_slope_kb_per_min']} |"
        )
    labels = list(dict.fromkeys(label for s in samples for label in s["rss_kb"]))
    per_sample = [
        "| min | " + " | ".join(labels) + " | Redis used MB | keys | Redis clients | generations | tokens | errors |",
        "|" + " --- |" * (len(labels) + 7),
    ]
    for s in samples:
        rss = " | ".join(f"{s['rss_kb'][k] / 1024:.1f}" if k in s["rss_kb"] else "" for k in labels)
        per_sample.append(
            f"| {s['minute']:.1f}{' at rest' if s.get('at_rest') else ''} | {rss} | "
            f"{s['redis_used_memory_kb'] / 1024:.1f} | {s['redis_keys']} | {s.get('redis_clients', '')} | "
            f"{s['generations']} | {s['tokens']} | {s['errors']} |"
        )
    elapsed = samples[-1]["minute"] if samples else 0
    expected = tally["terminals"].get("done", 0) * config["tokens"]
    report = f"""# Soak {config["name"]}

Machine: {os.cpu_count()} cores, shared; everything on one box (embedded Redis
{EmbeddedRedis(Path(".")).version()}). Stack as the Procfile runs it: web (gunicorn, gevent, 2 workers),
Celery worker (gevent pool), consumer; finished generations kept 5 minutes (`REDIS_STREAM_RETENTION_MS`).

Load: {config["streams"]} concurrent `synthetic` generations x {config["rate"]:g} tokens/s x {config["tokens"]} tokens,
each replaced as it ends, for {config["minutes"]:g} minutes; one reader each ({WS_SHARE:.0%} over WebSocket,
{RESUME_SHARE:.0%} dropping their connection midway and resuming from the last event id). Memory sampled every
{config["sample_s"]:g} s; a row marked "at rest" is taken once the last generations have ended.

## Verdict

Growth after the {config["warmup_minutes"]:g}-minute warm-up: the least-squares slope over the samples after it
(up to the end of the load), and the growth that slope adds up to over that window. Flat when the growth is
within 2 MB or 3 % of the value at the end of warm-up, whichever is larger. The slope over the last half of
that window tells a leak (it keeps its pace) from the tail of a warm-up (it slows down).

{chr(10).join(verdict_table)}

## What the readers saw

- generations read to their end: {tally["generations"]} ({tally["sse_readers"]} over SSE, {tally["ws_readers"]} over
  WebSocket; {tally["resumes"]} resumed after a dropped connection); terminals: {tally["terminals"]}
- tokens delivered: {tally["tokens"]} ({tally["tokens"] / max(1e-9, elapsed * 60):.0f}/s on average;
  {expected} expected from the generations that ended `done`; the rest are those of generations still running at the
  last sample, or whose reader failed)
- gaps: {tally["gaps"]}, duplicates: {tally["duplicates"]}, `done` with fewer tokens than asked: {tally["short"]}
- reader errors: {sum(tally["errors"].values())} {tally["errors"] or ""}
{"".join(f"  - {line}{chr(10)}" for line in tally.get("error_log", []))}
![memory over time]({plot.name})

## Every sample (RSS in MB)

{chr(10).join(per_sample)}
"""
    path = raw_path.with_suffix(".md")
    # Findings written by hand below the generated part are kept when the report is rendered again.
    earlier = path.read_text() if path.exists() else ""
    if FINDINGS in earlier:
        report += FINDINGS + earlier.split(FINDINGS, 1)[1]
    path.write_text(report)
    return path


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--report":
        print(f"Report: {write_report(Path(sys.argv[2]))}")
        return
    config = Config.from_env()
    print(
        f"Soak: {config.minutes:g} min, {config.streams} generations at once x {config.rate:g} tokens/s x "
        f"{config.tokens} tokens, sampled every {config.sample_s:g} s",
        flush=True,
    )
    print(f"Report: {run(config)}")


if __name__ == "__main__":
    main()

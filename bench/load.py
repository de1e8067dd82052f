"""The load process (``python -m bench.load``): runs every reader of one load level and prints JSON results.

python -m bench.load ours URL[,URL...] API_KEY STREAMS RATE TOKENS   (stream i uses the i-th URL, round robin)
python -m bench.load baseline URL REDIS_URL STREAMS RATE TOKENS
"""

from __future__ import annotations

import asyncio
import json
import resource
import subprocess
import sys
import time
from typing import Any
from urllib.parse import urlsplit

import httpx
import redis

from bench.client import StreamResult, cpu_seconds, read_sse


def _quantiles(latencies_s: list[float]) -> dict[str, float | None]:
    ordered = sorted(latencies_s)
    return {
        name: round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 2) if ordered else None
        for name, q in (("p50", 0.5), ("p99", 0.99))
    }


def latency_split(results: list[StreamResult], rate: float) -> dict[str, dict[str, float | None]] | None:
    """Each token's latency in two: producer ts to the raw write (the worker), raw write to receipt (the consumer,
    the hub, web and the network); for every token and for each stream's first second (the starts)."""
    if not any(r.written_s and len(r.written_s) == len(r.latencies_s) for r in results):
        return None
    kept = [r for r in results if len(r.written_s) == len(r.latencies_s)]
    split: dict[str, dict[str, float | None]] = {}
    for name, stop in (("", None), ("_first_second", int(rate))):
        written = [w for r in kept for w in r.written_s[:stop]]
        rest = [x - w for r in kept for x, w in zip(r.latencies_s[:stop], r.written_s[:stop], strict=True)]
        split[f"to_raw{name}"] = _quantiles(written)
        split[f"raw_to_reader{name}"] = _quantiles(rest)
    return split


def written_before_reader_pct(results: list[StreamResult]) -> float:
    """The share of tokens (percent) written before their reader's stream was answered."""
    counted = [(r.latencies_s, r.once_connected_s) for r in results if len(r.once_connected_s) == len(r.latencies_s)]
    total = sum(len(latencies) for latencies, _ in counted)
    before = sum(1 for latencies, once in counted for x, y in zip(latencies, once, strict=True) if y < x)
    return round(100 * before / total, 2) if total else 0.0


def _raise_fd_limit() -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


async def _ours(
    url: str, api_key: str, streams: int, rate: float, tokens: int
) -> tuple[list[StreamResult], list[float]]:
    urls = url.split(",")
    headers = {"Authorization": f"Bearer {api_key}"}
    results = [StreamResult() for _ in range(streams)]
    ttft: list[float] = []
    semaphore = asyncio.Semaphore(50)
    body = {"model": "synthetic", "prompt": "bench", "max_tokens": tokens, "options": {"tokens_per_second": rate}}
    clients = [httpx.AsyncClient(base_url=u, headers=headers, timeout=60) for u in urls]

    async def one(index: int) -> None:
        client = clients[index % len(clients)]
        parts = urlsplit(urls[index % len(urls)])
        async with semaphore:
            posted = time.time()
            created = (await client.post("/v1/generations", json=body)).json()
        await read_sse(parts.hostname or "", parts.port or 80, created["events_url"], headers, results[index])
        if results[index].first_token_at is not None:
            ttft.append(results[index].first_token_at - posted)

    try:
        await asyncio.gather(*(one(i) for i in range(streams)))
    finally:
        for client in clients:
            await client.aclose()
    return results, ttft


async def _baseline(
    url: str, redis_url: str, streams: int, rate: float, tokens: int
) -> tuple[list[StreamResult], list[float]]:
    parts = urlsplit(url)
    results = [StreamResult() for _ in range(streams)]
    readers = [
        asyncio.create_task(
            read_sse(parts.hostname or "", parts.port or 80, f"/stream?channel=gen-{i}", {}, results[i])
        )
        for i in range(streams)
    ]
    # Pub/sub keeps nothing: every reader must be subscribed before the first token is published.
    client = redis.Redis.from_url(redis_url)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        subscribed = sum(count for _, count in client.pubsub_numsub(*[f"gen-{i}" for i in range(streams)]))
        if subscribed >= streams:
            break
        await asyncio.sleep(0.2)
    client.close()
    publisher = subprocess.Popen(
        [sys.executable, "-m", "bench.publisher", redis_url, str(streams), str(rate), str(tokens)]
    )
    await asyncio.gather(*readers)
    publisher.wait(60)
    return results, []


def _producer_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    _raise_fd_limit()
    system, url, credential = sys.argv[1], sys.argv[2], sys.argv[3]
    streams, rate, tokens = int(sys.argv[4]), float(sys.argv[5]), int(sys.argv[6])
    cpu_before, started = cpu_seconds(), time.monotonic()
    run = _ours if system == "ours" else _baseline
    results, ttft = asyncio.run(run(url, credential, streams, rate, tokens))
    elapsed = time.monotonic() - started
    latencies = sorted(latency for r in results for latency in r.latencies_s)
    out: dict[str, Any] = {
        "system": system,
        "streams": streams,
        "rate": rate,
        "tokens": tokens,
        "delivered": len(latencies),
        "expected": streams * tokens,
        "gaps": sum(r.gaps for r in results),
        "duplicates": sum(r.duplicates for r in results),
        "errors": [r.error for r in results if r.error][:5],
        "unfinished": sum(1 for r in results if r.terminal is None),
        "elapsed_s": elapsed,
        "client_cpu_s": cpu_seconds() - cpu_before,
        "latency_ms": {
            name: round(latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000, 2) if latencies else None
            for name, q in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("max", 1.0))
        },
        # Each stream's tokens after its first second: what a reader sees once the step's starts are over (the
        # starts of every stream of a step come together, and their CPU delays the first tokens).
        "latency_ms_after_first_second": _quantiles([x for r in results for x in r.latencies_s[int(rate) :]]),
        # Each token's latency counted from when its reader's stream was answered, when it was written before: the
        # starts' tail without the wait for a reader that was not there yet (Flask-SSE publishes nothing before
        # every reader is subscribed); and the share of tokens written before their reader was answered.
        "latency_ms_once_connected": _quantiles([x for r in results for x in r.once_connected_s]),
        "written_before_reader_pct": written_before_reader_pct(results),
        # Where a token's latency went: from its producer ts to the worker's raw write (the stream id's clock, the
        # Redis server's), and from there to the reader. Tokenbridge only (Flask-SSE's events carry no id).
        "latency_split_ms": latency_split(results, rate) if system == "ours" else None,
        "ttft_ms": {
            name: round(sorted(ttft)[min(len(ttft) - 1, int(q * len(ttft)))] * 1000, 2) if ttft else None
            for name, q in (("p50", 0.5), ("p99", 0.99))
        },
    }
    if system == "baseline":
        out["producer_cpu_s"] = _producer_cpu_s()
    if streams == 1 and len(results[0].latencies_s) >= 10:
        # One long answer: does a token cost more at the end than at the start?
        fifth = len(results[0].latencies_s) // 5
        for name, part in (
            ("first_fifth", results[0].latencies_s[:fifth]),
            ("last_fifth", results[0].latencies_s[-fifth:]),
        ):
            ordered = sorted(part)
            out[f"latency_ms_{name}"] = {
                "p50": round(ordered[len(ordered) // 2] * 1000, 2),
                "p99": round(ordered[int(0.99 * len(ordered))] * 1000, 2),
            }
    print(json.dumps(out))


if __name__ == "__main__":
    main()

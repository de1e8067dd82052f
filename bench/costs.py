"""What a generation costs apart from its tokens, on a running stack.

- ``generation_cpu``: the CPU every process (web, worker, consumer, Redis, children included) spends on one
  generation with an empty answer, from its POST to its ``done`` read by an SSE client; with what explains it:
  the Redis commands of a generation, and web's CPU for a bare HTTP request (a generation makes two).
- ``burst``: many submissions at once, each read by an SSE client: how long until each gets its first token.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx

from bench.client import StreamResult, quantiles, raise_fd_limit, read_sse, submit
from bench.profile import command_stats, cpu_seconds
from bridge.embedded import EmbeddedRedis
from tests.support.stack import Stack

# An answer with no token: ``echo`` of an empty user message ends with ``done`` at once. (``max_tokens`` 0 and
# an empty ``prompt`` are refused with 422.)
EMPTY_ANSWER: dict[str, Any] = {"model": "echo", "messages": [{"role": "user", "content": ""}]}


def stack_pids(stack: Stack) -> dict[str, int]:
    """The root process of each part of the stack (their children count with them) and Redis."""
    pids = {name: process.pid for name, process in stack.processes.items()}
    assert isinstance(stack.redis, EmbeddedRedis) and stack.redis.process is not None
    pids["redis"] = stack.redis.process.pid
    return pids


def _cpu(pids: dict[str, int]) -> dict[str, float]:
    return {name: cpu_seconds(pid) for name, pid in pids.items()}


def _host_port(stack: Stack) -> tuple[str, int]:
    return "127.0.0.1", stack.web_ports[0]


async def _submit_and_read(
    stack: Stack, body: dict[str, Any], results: list[StreamResult], concurrency: int, *, read_under_limit: bool
) -> float:
    """POST one generation per result and read each to its terminal event over SSE; the time the first POST
    went out. ``concurrency`` bounds the POSTs, and the whole POST-to-end when ``read_under_limit``."""
    host, port = _host_port(stack)
    semaphore = asyncio.Semaphore(concurrency)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=stack.base_url, headers=stack.headers, timeout=60, limits=limits) as client:

        async def one(result: StreamResult) -> None:
            async with semaphore:
                created = await submit(client, body, result)
                if created is not None and read_under_limit:
                    await read_sse(host, port, created["events_url"], stack.headers, result)
            if created is not None and not read_under_limit:
                await read_sse(host, port, created["events_url"], stack.headers, result)

        started = time.time()
        await asyncio.gather(*(one(result) for result in results))
    return started


def _errors(results: list[StreamResult]) -> list[str]:
    return [r.error for r in results if r.error][:5]


def generation_cpu(stack: Stack, count: int, *, concurrency: int = 20, idle_s: float = 2.0) -> dict[str, Any]:
    """CPU milliseconds per generation of each process: ``count`` empty answers, ``concurrency`` at a time,
    each read to ``done``, after a few not counted. The stack's idle CPU (heartbeats, presence) is measured first
    and reported apart; it is not subtracted."""
    pids = stack_pids(stack)
    warm_up = [StreamResult() for _ in range(min(count, 10))]  # first requests of fresh processes: not counted
    asyncio.run(_submit_and_read(stack, EMPTY_ANSWER, warm_up, concurrency, read_under_limit=True))
    idle_before = _cpu(pids)
    time.sleep(idle_s)
    idle_ms_per_s = sum(cpu_seconds(pid) - idle_before[name] for name, pid in pids.items()) * 1000 / idle_s
    results = [StreamResult() for _ in range(count)]
    redis_client = stack.client()
    commands_before = command_stats(redis_client)
    before, started = _cpu(pids), time.monotonic()
    asyncio.run(_submit_and_read(stack, EMPTY_ANSWER, results, concurrency, read_under_limit=True))
    elapsed = time.monotonic() - started
    spent = {name: cpu_seconds(pid) - before[name] for name, pid in pids.items()}
    commands = _per_generation(commands_before, command_stats(redis_client), count)
    per = {name: round(seconds * 1000 / count, 3) for name, seconds in spent.items()}
    per["total"] = round(sum(spent.values()) * 1000 / count, 3)
    return {
        "generations": count,
        "concurrency": concurrency,
        "request": EMPTY_ANSWER,
        "done": sum(1 for r in results if r.terminal == "done"),
        "tokens": sum(r.tokens for r in results),
        "errors": _errors(results),
        "elapsed_s": round(elapsed, 2),
        "cpu_ms_per_generation": per,
        "idle_cpu_ms_per_s": round(idle_ms_per_s, 2),
        "idle_cpu_ms_per_generation": round(idle_ms_per_s * elapsed / count, 3),
        "redis_commands_per_generation": commands,
        "bare_request_web_ms": bare_request_cpu(stack),
    }


def _per_generation(
    before: dict[str, tuple[int, int]], after: dict[str, tuple[int, int]], count: int
) -> dict[str, float]:
    """Calls per generation of each Redis command (a script's own commands counted apart too), most first."""
    calls = {name: (c - before.get(name, (0, 0))[0]) / count for name, (c, _) in after.items()}
    return {name: round(n, 2) for name, n in sorted(calls.items(), key=lambda item: -item[1]) if n >= 0.05}


def bare_request_cpu(stack: Stack, count: int = 1000, *, concurrency: int = 20) -> dict[str, float]:
    """web's CPU (ms) per bare ``GET /healthz``: on kept-alive connections (as the POSTs here go) and on a new
    connection each (as each SSE reader here connects)."""
    web = stack_pids(stack)["web"]

    async def hit(keep_alive: bool) -> None:
        limits = httpx.Limits(max_keepalive_connections=concurrency if keep_alive else 0)
        async with httpx.AsyncClient(base_url=stack.base_url, limits=limits, timeout=30) as client:
            semaphore = asyncio.Semaphore(concurrency)

            async def one() -> None:
                async with semaphore:
                    (await client.get("/healthz")).raise_for_status()

            await asyncio.gather(*(one() for _ in range(count)))

    measured = {}
    for name, keep_alive in (("kept_alive", True), ("new_connection", False)):
        asyncio.run(hit(keep_alive))  # warm
        before = cpu_seconds(web)
        asyncio.run(hit(keep_alive))
        measured[name] = round((cpu_seconds(web) - before) * 1000 / count, 3)
    return measured


def burst(stack: Stack, count: int, *, concurrency: int = 50, tokens: int = 20, rate: float = 20.0) -> dict[str, Any]:
    """``count`` submissions of ``tokens`` tokens at ``rate``/s, POSTed ``concurrency`` at a time as fast as they
    are accepted, each read by its own SSE client from the moment its POST returns.

    Time to first token is reported from the burst's start (the first POST) and from each POST's start (the
    moment that request was sent, after waiting for a free slot among the ``concurrency``)."""
    raise_fd_limit()
    body = {"model": "synthetic", "prompt": "burst", "max_tokens": tokens, "options": {"tokens_per_second": rate}}
    results = [StreamResult() for _ in range(count)]
    pids = stack_pids(stack)
    before = _cpu(pids)
    started = asyncio.run(_submit_and_read(stack, body, results, concurrency, read_under_limit=False))
    spent = {name: round(cpu_seconds(pid) - before[name], 2) for name, pid in pids.items()}
    firsts = [r for r in results if r.first_token_at is not None and r.posted_at is not None]
    accepted = [r for r in results if r.post_s is not None]
    return {
        "submissions": count,
        "concurrency": concurrency,
        "tokens": tokens,
        "rate": rate,
        "accepted": len(accepted),
        "all_accepted_after_s": round(max((r.posted_at or 0) + (r.post_s or 0) for r in accepted) - started, 2)
        if accepted
        else None,
        "with_first_token": len(firsts),
        "done": sum(1 for r in results if r.terminal == "done"),
        "gaps": sum(r.gaps for r in results),
        "duplicates": sum(r.duplicates for r in results),
        "errors": _errors(results),
        "post_ms": quantiles([r.post_s for r in accepted if r.post_s is not None], scale=1000, digits=1),
        "ttft_from_burst_start_s": quantiles([(r.first_token_at or 0) - started for r in firsts]),
        "ttft_from_post_s": quantiles([(r.first_token_at or 0) - (r.posted_at or 0) for r in firsts]),
        "cpu_s": spent,
    }

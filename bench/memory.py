"""What Redis holds per token: ``used_memory`` before and after a batch of answers, on a stack of its own.

Run on a fresh stack so that no other step's keys come or go meanwhile; the figures are deltas all the same.
Redis frees lazily, and what is in flight when the last answer ends (task messages, the last commits) is gone a
second later: every reading is taken after ``MEMORY PURGE`` (where the allocator has it) and a second's wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from typing import Any

import httpx
import redis

from bench.client import StreamResult, submit
from bridge import keys
from tests.support.stack import Stack

FINISHED = {"completed", "failed", "cancelled"}


# The fields of INFO memory the report shows, as deltas from before the answers.
FIELDS = ("used_memory", "used_memory_dataset", "used_memory_overhead", "mem_clients_normal", "used_memory_lua")


def memory(client: redis.Redis) -> dict[str, int]:
    """INFO memory's FIELDS once Redis has given back what it can: ``MEMORY PURGE``, a second for what is still in
    flight when the last answer ends (task messages, the last commits), then the median of three readings (a
    blocked reader's buffers come and go by tens of KB)."""
    with contextlib.suppress(redis.ResponseError):  # not jemalloc
        client.memory_purge()
    time.sleep(1.0)
    readings = []
    for _ in range(3):
        info: dict[str, Any] = client.info("memory")
        readings.append({name: int(info.get(name, 0)) for name in FIELDS})
        time.sleep(0.2)
    readings.sort(key=lambda reading: reading["used_memory"])
    return readings[1]


def _body(session: str, tokens: int, index: int) -> dict[str, Any]:
    return {
        "model": "synthetic",
        "prompt": f"memory {index}",
        "session_id": session,
        "max_tokens": tokens,
        "options": {"tokens_per_second": 100_000},  # the most the option takes: unpaced
    }


async def _submit_all(stack: Stack, bodies: list[dict[str, Any]]) -> list[dict[str, Any] | None]:
    semaphore = asyncio.Semaphore(20)
    async with httpx.AsyncClient(base_url=stack.base_url, headers=stack.headers, timeout=60) as client:

        async def one(body: dict[str, Any]) -> dict[str, Any] | None:
            async with semaphore:
                return await submit(client, body, StreamResult())

        return await asyncio.gather(*(one(body) for body in bodies))


def _wait_finished(client: redis.Redis, ids: list[str], timeout_s: float) -> tuple[float, int]:
    """Wait until every generation has finished; (seconds it took, highest ``used_memory`` seen meanwhile)."""
    started, peak = time.monotonic(), 0
    while time.monotonic() - started < timeout_s:
        pipe = client.pipeline(transaction=False)
        for generation_id in ids:
            pipe.hget(keys.gen_meta(generation_id), "status")
        statuses = pipe.execute()
        peak = max(peak, int(client.info("memory")["used_memory"]))
        if all(status in FINISHED for status in statuses):
            break
        time.sleep(0.2)
    return time.monotonic() - started, peak


def key_sizes(client: redis.Redis, generation_id: str, session_id: str) -> dict[str, int]:
    """``MEMORY USAGE`` (every element counted) of each key of one generation, and of its session's streams."""
    pattern = keys.gen_meta(generation_id).removesuffix("meta") + "*"
    names = {name.rsplit(":", 1)[1]: name for name in client.scan_iter(match=pattern, count=1000)}
    names["session generations"] = keys.session_generations(session_id)
    names["session out"] = keys.session_out(session_id)
    sizes = {}
    for label, name in sorted(names.items()):
        usage = client.memory_usage(name, samples=0)
        if usage is not None:
            sizes[label] = int(usage)
    return sizes


def families(client: redis.Redis) -> dict[str, int]:
    """``MEMORY USAGE`` of every key, added up by family: the part between braces (a hash tag: a generation, a
    session) replaced by ``{…}``."""
    sizes: dict[str, int] = {}
    for name in client.scan_iter(count=1000):
        family = re.sub(r"\{[^}]*\}", "{…}", name)
        sizes[family] = sizes.get(family, 0) + int(client.memory_usage(name, samples=0) or 0)
    return sizes


def _family_deltas(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    names = set(before) | set(after)
    deltas = {name: after.get(name, 0) - before.get(name, 0) for name in names}
    return dict(sorted(((n, d) for n, d in deltas.items() if d), key=lambda item: -abs(item[1])))


def _texts(stack: Stack, ids: list[str]) -> tuple[int, int]:
    """(bytes of text, completion tokens) of the answers, as the API returns them."""
    text_bytes = tokens = 0
    with httpx.Client(base_url=stack.base_url, headers=stack.headers, timeout=30) as client:
        for generation_id in ids:
            record = client.get(f"/v1/generations/{generation_id}").json()
            text_bytes += len(record.get("text", "").encode())
            tokens += int(record.get("usage", {}).get("completion_tokens", 0))
    return text_bytes, tokens


def redis_memory(stack: Stack, answers: int, tokens: int, sessions: int, window_s: float) -> dict[str, Any]:
    """``answers`` answers of ``tokens`` unpaced tokens in ``sessions`` sessions: Redis memory per token right
    after the last one finished, and again once the resume window (``window_s``) and 3 s more have passed."""
    client = stack.client()
    # A warm-up batch of the same shape grows every connection pool to what the batch needs (a connection costs
    # Redis tens of KB whatever it carries); its resume window passes before the first reading.
    warm = asyncio.run(_submit_all(stack, [_body(f"bench-warm-{i % sessions}", tokens, i) for i in range(answers)]))
    _wait_finished(client, [w["id"] for w in warm if w], 300)
    time.sleep(window_s + 3)
    before, families_before = memory(client), families(client)
    bodies = [_body(f"bench-memory-{i % sessions}", tokens, i) for i in range(answers)]
    started = time.monotonic()
    created = [c for c in asyncio.run(_submit_all(stack, bodies)) if c is not None]
    ids = [c["id"] for c in created]
    _took, peak = _wait_finished(client, ids, 300)
    finished = time.monotonic()
    after, families_after = memory(client), families(client)
    sample = created[len(created) // 2]
    keys_after = key_sizes(client, sample["id"], sample["session_id"])
    text_bytes, counted = _texts(stack, ids)
    time.sleep(max(0.0, finished + window_s + 3 - time.monotonic()))
    later, families_later = memory(client), families(client)
    keys_later = key_sizes(client, sample["id"], sample["session_id"])
    client.close()
    counted = max(1, counted)
    grown, held = after["used_memory"] - before["used_memory"], later["used_memory"] - before["used_memory"]
    return {
        "answers": answers,
        "accepted": len(ids),
        "tokens_per_answer": tokens,
        "sessions": sessions,
        "tokens": counted,
        "text_bytes": text_bytes,
        "finished_after_s": round(finished - started, 2),
        "resume_window_s": window_s,
        "used_memory_before": before["used_memory"],
        "used_memory_peak": peak,
        "bytes": grown,
        "bytes_per_token": round(grown / counted, 1),
        "bytes_after_window": held,
        "bytes_per_token_after_window": round(held / counted, 1),
        "allowance_after_window": text_bytes + 1024 * len(ids),
        "deltas": {name: after[name] - before[name] for name in FIELDS},
        "deltas_after_window": {name: later[name] - before[name] for name in FIELDS},
        "key_bytes": sum(_family_deltas(families_before, families_after).values()),
        "key_bytes_after_window": sum(_family_deltas(families_before, families_later).values()),
        "families": _family_deltas(families_before, families_after),
        "families_after_window": _family_deltas(families_before, families_later),
        "sample_keys": keys_after,
        "sample_keys_after_window": keys_later,
    }

"""Beyond one machine: a 3-master Redis Cluster, two of every process, a consumer killed mid-run.

The broker is a standalone Redis of its own (Celery cannot use a cluster). Every reader must end with the
exact text, nothing lost, nothing duplicated, whichever web it reads from and whichever consumer processed it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from bridge import keys
from bridge.connections import close
from bridge.embedded import cluster_unavailable
from tests.reader import ResumingReader, read_all
from tests.stack import Stack

pytestmark = [
    pytest.mark.slow,
    pytest.mark.faults,
    pytest.mark.skipif(bool(cluster_unavailable()), reason=cluster_unavailable() or ""),
]

GENERATIONS = 200
WORDS = " ".join(f"word{i}" for i in range(40))


def _wait(condition: Callable[[], object], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not met within {timeout_s}s")
        time.sleep(0.05)


def test_200_generations_on_a_cluster_survive_a_consumer_kill(
    make_stack: Callable[..., Stack], record: Callable[..., None]
) -> None:
    # Given a 3-master cluster for the streams, a Redis broker, and two web, consumer and worker processes
    stack = make_stack(
        cluster=True,
        CONSUMER_CLAIM_IDLE_MS="3000",
        CONSUMER_HEARTBEAT_MS="500",
        CELERY_CONCURRENCY="120",
        RATE_LIMIT="",
        MAX_RUNNING_PER_KEY="0",
    )
    for name in ("web-a", "web-b"):
        stack.start(name, "web")
    for name in ("consumer-a", "consumer-b", "worker-a", "worker-b"):
        stack.start(name, name.split("-")[0])
    stack.wait_ready(consumers=2, workers=2)
    webs = [stack.url("", web=0), stack.url("", web=1)]

    # When 200 generations are submitted, half through each web, each read at once through both webs
    def submit(index: int) -> dict[str, Any]:
        body = {"model": "echo", "prompt": WORDS, "options": {"delay_ms": 50}}
        response = httpx.post(f"{webs[index % 2]}/v1/generations", json=body, headers=stack.headers, timeout=30)
        assert response.status_code == 202, response.text
        created: dict[str, Any] = response.json()
        return created

    def start_reading(index: int) -> ResumingReader:
        reader = ResumingReader([webs[index % 2], webs[(index + 1) % 2]], submit(index), stack.headers, timeout_s=150)
        reader.start()
        return reader

    started = time.monotonic()
    with ThreadPoolExecutor(20) as pool:
        readers = list(pool.map(start_reading, range(GENERATIONS // 2)))
        _wait(lambda: sum(len(r.outcome.events) >= 3 for r in readers) >= 50, 60, "streams started")
        # And consumer A is killed with SIGKILL mid-run, while the second half is being submitted
        stack.kill("consumer-a")
        readers += list(pool.map(start_reading, range(GENERATIONS // 2, GENERATIONS)))
    outcomes = read_all(readers, timeout_s=150)
    elapsed_s = time.monotonic() - started

    # Then every reader has its exact text: 0 lost, 0 duplicated, every stream ended with `done`
    hanging = sum(o.terminal is None for o in outcomes)
    wrong = sum(o.terminal is not None and (o.terminal.event != "done" or o.text != WORDS) for o in outcomes)
    duplicated = sum(o.duplicates for o in outcomes)
    gaps = sum(o.seq_gaps for o in outcomes)
    assert (hanging, wrong, duplicated, gaps) == (0, 0, 0, 0)
    # And the generations really were spread: their keys on all three masters, both consumers took part
    client: Any = stack.client()
    nodes = {client.get_node_from_key(keys.gen_out(r.generation["id"])).port for r in readers}
    assert len(nodes) == 3
    # And consumer B took over what A held when it died
    takeovers = (stack.logs / "consumer-b.log").read_text().count("Taking over generation")
    assert takeovers > 0
    stalls = [o.longest_stall_s for o in outcomes]
    tokens = sum(len(o.events) for o in outcomes)
    record(
        scenario="cluster: 200 generations, consumer kill -9",
        generations=GENERATIONS,
        lost=0,
        duplicated=0,
        longest_stall_s=round(max(stalls), 2),
        elapsed_s=round(elapsed_s, 2),
        events_delivered=tokens,
        reconnects=sum(o.reconnects for o in outcomes),
        takeovers=takeovers,
    )
    assert max(stalls) < 15
    close(client)

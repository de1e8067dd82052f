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
from tests.support import wait_for
from tests.support.cluster import EmbeddedCluster, cluster_unavailable
from tests.support.reader import ResumingReader, read_all
from tests.support.stack import Stack

pytestmark = [
    pytest.mark.slow,
    pytest.mark.faults,
    pytest.mark.skipif(bool(cluster_unavailable()), reason=cluster_unavailable() or ""),
]

GENERATIONS = 200
WORDS = " ".join(f"word{i}" for i in range(40))


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
        wait_for(lambda: sum(len(r.outcome.events) >= 3 for r in readers) >= 50, timeout_s=60)
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


def test_generations_keep_streaming_while_their_slots_move_to_other_nodes(
    make_stack: Callable[..., Stack], record: Callable[..., None]
) -> None:
    # Given generations streaming on a cluster (one web, consumer and worker)
    stack = make_stack(cluster=True, RATE_LIMIT="", MAX_RUNNING_PER_KEY="0")
    for name in ("web", "consumer", "worker"):
        stack.start(name)
    stack.wait_ready()
    cluster = stack.redis
    assert isinstance(cluster, EmbeddedCluster)
    generations = [stack.create(model="echo", prompt=WORDS, options={"delay_ms": 60}) for _ in range(12)]
    readers = [ResumingReader([stack.url("")], g, stack.headers, timeout_s=90) for g in generations]
    for reader in readers:
        reader.start()
    wait_for(lambda: all(len(r.outcome.events) >= 3 for r in readers), timeout_s=30)
    # When the slot of every generation moves to the next node mid-stream, as a resharding does
    client: Any = stack.client()
    ports = [node.port for node in cluster.nodes]
    started = time.monotonic()
    for generation in generations:
        slot = client.keyslot(keys.gen_meta(generation["id"]))
        here = ports.index(client.get_node_from_key(keys.gen_meta(generation["id"])).port)
        cluster.move_slot(slot, (here + 1) % len(ports))
    # And so do the slots of every work-stream shard, before more generations are submitted
    for shard in keys.work_streams(16):
        here = ports.index(client.get_node_from_key(shard).port)
        cluster.move_slot(client.keyslot(shard), (here + 1) % len(ports))
    moved_in_s = time.monotonic() - started
    later = [stack.create(model="echo", prompt=WORDS, options={"delay_ms": 10}) for _ in range(8)]
    readers += [ResumingReader([stack.url("")], g, stack.headers, timeout_s=90) for g in later]
    outcomes = read_all(readers, timeout_s=90)
    # Then every reader, of the moved generations and of the new ones, gets its exact text: nothing lost, nothing
    # duplicated
    hanging = sum(o.terminal is None for o in outcomes)
    wrong = sum(o.terminal is not None and (o.terminal.event != "done" or o.text != WORDS) for o in outcomes)
    assert (hanging, wrong, sum(o.duplicates for o in outcomes), sum(o.seq_gaps for o in outcomes)) == (0, 0, 0, 0)
    record(
        scenario="cluster: slots moved mid-stream",
        generations=len(readers),
        lost=0,
        duplicated=0,
        slots_moved_in_s=round(moved_in_s, 2),
        longest_stall_s=round(max(o.longest_stall_s for o in outcomes), 2),
    )
    close(client)

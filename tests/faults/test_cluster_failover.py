"""Redis Cluster failover under load: 3 masters with a replica each; one master is killed mid-stream and
its replica promoted by the cluster itself. The processes follow through the cluster client alone."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
import redis

from bridge import keys
from tests.support import wait_for
from tests.support.cluster import EmbeddedCluster, cluster_unavailable
from tests.support.reader import ResumingReader, read_all
from tests.support.stack import Stack

pytestmark = [
    pytest.mark.slow,
    pytest.mark.faults,
    pytest.mark.skipif(bool(cluster_unavailable()), reason=cluster_unavailable() or ""),
]

WORDS = " ".join(f"word{i}" for i in range(40))
GENERATIONS = 24


def _replicated_cluster(stack: Stack, directory: Any) -> EmbeddedCluster:
    """Swap the stack's cluster for one with a replica per master (node timeout 2 s), in sync."""
    stack.redis.stop()
    cluster = EmbeddedCluster(directory, replicas=1, node_timeout_ms=2000).start()
    stack.redis = cluster
    stack.env["REDIS_URL"] = cluster.url
    deadline = time.monotonic() + 30
    for node in cluster.nodes:
        with redis.Redis(host="127.0.0.1", port=node.port, decode_responses=True) as client:
            while True:
                info = client.info("replication")
                synced = info["role"] == "master" and info.get("slave0", {}).get("state") == "online"
                if info["role"] == "slave" or synced:
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"no replica in sync for node {node.port}")
                time.sleep(0.1)  # polling until the node's replica reports itself in sync
    return cluster


def _master_ports(cluster: EmbeddedCluster) -> list[int]:
    ports = []
    for node in cluster.nodes:
        try:
            with redis.Redis(host="127.0.0.1", port=node.port, socket_timeout=1) as client:
                if client.info("replication")["role"] == "master":
                    ports.append(node.port)
        except redis.RedisError:
            continue
    return ports


def test_generations_follow_a_cluster_master_failover(
    make_stack: Callable[..., Stack], record: Callable[..., None], tmp_path: Any
) -> None:
    # Given a cluster of 3 masters with a replica each, and one web, consumer and worker
    stack = make_stack(cluster=True, RATE_LIMIT="", MAX_RUNNING_PER_KEY="0", LEASE_MS="5000", REDIS_RETRY_S="60")
    cluster = _replicated_cluster(stack, tmp_path / "replicated")
    for name in ("web", "worker", "consumer"):
        stack.start(name)
    stack.wait_ready()
    generations = [stack.create(model="echo", prompt=WORDS, options={"delay_ms": 400}) for _ in range(GENERATIONS)]
    readers = [ResumingReader([stack.base_url], g, stack.headers, timeout_s=120) for g in generations]
    for reader in readers:
        reader.start()
    # Polled until every stream has 3 events, for at most 30 s: a bounded wait, not an assertion (the streams
    # running at the kill are counted, and asserted at the end)
    deadline = time.monotonic() + 30
    while sum(len(r.outcome.events) >= 3 for r in readers) < GENERATIONS and time.monotonic() < deadline:
        time.sleep(0.1)
    # When a master (not the node REDIS_URL names) is killed mid-stream
    masters = _master_ports(cluster)
    victim = next(node for node in cluster.nodes if node.port in masters and node.port != cluster.nodes[0].port)
    client = stack.client()
    on_victim = sum(
        client.get_node_from_key(keys.gen_out(g["id"])).port == victim.port  # type: ignore[attr-defined]
        for g in generations
    )
    client.close()
    running = sum(r.outcome.terminal is None for r in readers)
    killed_at = time.monotonic()
    victim.kill()
    wait_for(lambda: len(_master_ports(cluster)) >= 3, timeout_s=30, interval_s=0.1, message="no replica was promoted")
    promoted_s = time.monotonic() - killed_at
    outcomes = read_all(readers, timeout_s=150)
    after = stack.create(model="echo", prompt=WORDS)
    fresh = read_all([ResumingReader([stack.base_url], after, stack.headers, timeout_s=60)])[0]
    # Then what readers saw is counted, every stream ended, and new generations complete
    terminals = Counter(o.terminal.event if o.terminal else "none" for o in outcomes)
    summary = {
        "promoted_s": round(promoted_s, 2),
        "generations": GENERATIONS,
        "running_at_kill": running,
        "on_the_killed_master": on_victim,
        "exact": sum(1 for o in outcomes if o.terminal and o.terminal.event == "done" and o.text == WORDS),
        "terminals": dict(terminals),
        "duplicated_events": sum(o.duplicates for o in outcomes),
        "seq_gaps": sum(o.seq_gaps for o in outcomes),
        "restarts": sum(o.restarts for o in outcomes),
        "longest_stall_s": round(max(o.longest_stall_s for o in outcomes), 2),
    }
    print(f"cluster failover: {summary}")
    record(scenario="cluster master failover", **summary)
    assert fresh.terminal is not None and fresh.terminal.event == "done" and fresh.text == WORDS
    assert terminals.get("none", 0) == 0, summary
    assert running == GENERATIONS and on_victim > 0, summary  # the kill met streams in flight

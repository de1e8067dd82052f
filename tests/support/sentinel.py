"""A primary, a replica and three Sentinels on loopback, from Debian's redis-server (``--sentinel``).

For the failover tests: ``kill_primary`` is a crash (SIGKILL); the sentinels see it down after
``down_after_ms`` and promote the replica.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import redis

from bridge.embedded import EmbeddedRedis, free_port

MASTER_NAME = "tokenbridge"


def sentinel_binary() -> str | None:
    """A redis-server that can run as a sentinel (Debian's), or None."""
    for candidate in (os.environ.get("TOKENBRIDGE_TEST_REDIS_SENTINEL", ""), "/usr/bin/redis-server"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return shutil.which("redis-server")


class SentinelSetup:
    """A primary with one replica, watched by three sentinels (quorum 2)."""

    def __init__(self, directory: Path, *, binary: str, down_after_ms: int = 1000) -> None:
        self.directory = directory
        self.binary = binary
        self.down_after_ms = down_after_ms
        self.primary = EmbeddedRedis(directory / "primary", binary=binary)
        self.replica = EmbeddedRedis(directory / "replica", binary=binary)
        self.replica.extra_args = ["--replicaof", "127.0.0.1", str(self.primary.port)]
        self.sentinel_ports = [free_port() for _ in range(3)]
        self.sentinels: list[subprocess.Popen[bytes]] = []

    @property
    def addresses(self) -> str:
        return ",".join(f"127.0.0.1:{port}" for port in self.sentinel_ports)

    def start(self) -> SentinelSetup:
        self.primary.start()
        self.replica.start()
        self._wait_replicating(self.primary.port)
        for port in self.sentinel_ports:
            directory = self.directory / f"sentinel-{port}"
            directory.mkdir(parents=True, exist_ok=True)
            config = directory / "sentinel.conf"
            # A sentinel rewrites its own config file (what it learnt about replicas, sentinels, epochs).
            config.write_text(
                f"port {port}\nbind 127.0.0.1\ndir {directory}\nlogfile {directory / 'sentinel.log'}\n"
                f"sentinel monitor {MASTER_NAME} 127.0.0.1 {self.primary.port} 2\n"
                f"sentinel down-after-milliseconds {MASTER_NAME} {self.down_after_ms}\n"
                f"sentinel failover-timeout {MASTER_NAME} 10000\n"
                f"sentinel parallel-syncs {MASTER_NAME} 1\n"
            )
            self.sentinels.append(
                subprocess.Popen(
                    [self.binary, str(config), "--sentinel"],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    start_new_session=True,
                )
            )
        self._wait_sentinels_agree()
        return self

    def master_port(self) -> int | None:
        """The master's port according to a majority of sentinels that answer, or None."""
        seen: dict[int, int] = {}
        for port in self.sentinel_ports:
            try:
                with redis.Redis(host="127.0.0.1", port=port, socket_timeout=1, decode_responses=True) as client:
                    _, master_port = client.sentinel_get_master_addr_by_name(MASTER_NAME)
            except (redis.RedisError, TypeError):
                continue
            seen[int(master_port)] = seen.get(int(master_port), 0) + 1
        for master_port, count in seen.items():
            if count >= 2:
                return master_port
        return None

    def kill_primary(self) -> None:
        self.primary.kill()

    def stop(self) -> None:
        for process in self.sentinels:
            if process.poll() is None:
                process.kill()
                process.wait(10)
        self.replica.stop()
        self.primary.stop()

    def _wait_replicating(self, primary_port: int, timeout_s: float = 20) -> None:
        deadline = time.monotonic() + timeout_s
        with redis.Redis(host="127.0.0.1", port=primary_port, decode_responses=True) as client:
            while time.monotonic() < deadline:
                info = client.info("replication")
                if info.get("connected_slaves", 0) >= 1 and info.get("slave0", {}).get("state") == "online":
                    return
                time.sleep(0.1)
        raise RuntimeError("the replica did not catch up with the primary")

    def _wait_sentinels_agree(self, timeout_s: float = 20) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.master_port() == self.primary.port and self._sentinels_know_each_other():
                return
            time.sleep(0.2)
        raise RuntimeError("the sentinels did not agree on the primary")

    def _sentinels_know_each_other(self) -> bool:
        for port in self.sentinel_ports:
            with redis.Redis(host="127.0.0.1", port=port, socket_timeout=1, decode_responses=True) as client:
                try:
                    master = client.sentinel_master(MASTER_NAME)
                except redis.RedisError:
                    return False
                if int(master.get("num-other-sentinels", 0)) < 2 or int(master.get("num-slaves", 0)) < 1:
                    return False
        return True

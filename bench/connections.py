"""Redis connections held by each Procfile process, idle and under load, as Redis counts them (``CLIENT LIST``).

    python -m bench.connections [--generations 150] [--max-connections 4] [--split-broker] [--no-flower]

Starts web (2 gunicorn workers), worker (50 greenlets), consumer and Flower on an embedded Redis (and, with
``--split-broker``, Celery's broker on a second one), the way the Procfile does. Each client of ``CLIENT LIST``
is given to the process that owns its socket (matched by local port), per Redis: once idle, then the highest
count seen while ``--generations`` generations run at once, each read by an SSE client. docs/deploy.md has the
figures.
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil
import redis

from bridge.embedded import EmbeddedRedis, free_port
from tests.support.procfile import ROOT
from tests.support.stack import Stack, build_stack

FLOWER_AUTH = ("bench", "connections")
PROMPT = " ".join(f"word{i}" for i in range(60))  # 60 tokens at 50 ms: 3 s per generation


def _owners(stack: Stack, ports: set[int]) -> dict[int, str]:
    """Local port of each connection to a Redis in ``ports`` -> the Procfile process it belongs to."""
    owners = {}
    for name, process in stack.processes.items():
        try:
            root = psutil.Process(process.pid)
            family = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            continue
        for member in family:
            try:
                connections = member.net_connections(kind="tcp")
            except psutil.NoSuchProcess:
                continue
            owners.update({c.laddr.port: name for c in connections if c.raddr and c.raddr.port in ports})
    return owners


def _count(stack: Stack, servers: dict[str, redis.Redis]) -> Counter[tuple[str, str]]:
    """Clients of each Redis by (redis, process); the measuring client itself is left out."""
    ports = {int(client.connection_pool.connection_kwargs["port"]) for client in servers.values()}
    owners = _owners(stack, ports)
    clients = {label: client.client_list() for label, client in servers.items()}
    owners.update(_owners(stack, ports))  # and the sockets opened while CLIENT LIST ran
    counts: Counter[tuple[str, str]] = Counter()
    for label, entries in clients.items():
        for entry in entries:
            if entry.get("name") == "bench-connections":
                continue
            port = int(entry["addr"].rpartition(":")[2])
            counts[(label, owners.get(port, "?"))] += 1
    return counts


def _load(stack: Stack, generations: int, flower_port: int | None) -> None:
    """``generations`` echo generations at once, each read to its end by an SSE client."""

    def one(index: int) -> None:
        created = stack.create(model="echo", prompt=f"{index} {PROMPT}", options={"delay_ms": 50})
        assert stack.events(created, timeout_s=60).events[-1].event == "done"

    with ThreadPoolExecutor(generations) as pool:
        futures = [pool.submit(one, i) for i in range(generations)]
        if flower_port:  # what an operator looking at Flower's worker list adds
            time.sleep(1)
            httpx.get(f"http://127.0.0.1:{flower_port}/api/workers", params={"refresh": "1"}, auth=FLOWER_AUTH)
        for future in futures:
            future.result()


@dataclass
class Measurement:
    """Clients by (redis, process): once idle, and the highest count of each during the load."""

    idle: Counter[tuple[str, str]]
    busy: Counter[tuple[str, str]]
    busy_total: int  # the highest total at one moment (the processes' peaks need not coincide)


def measure(generations: int, max_connections: int | None, split_broker: bool, flower: bool) -> Measurement:
    directory = Path(tempfile.mkdtemp(prefix="bench-connections-"))
    env = {"WEB_CONCURRENCY": "2", "CELERY_CONCURRENCY": "50", "FLOWER_BASIC_AUTH": ":".join(FLOWER_AUTH)}
    if max_connections:
        env["REDIS_MAX_CONNECTIONS"] = str(max_connections)
    stack = build_stack(directory / "streams", ROOT / "test-artifacts" / "connections-logs", **env)
    servers = {"streams": redis.Redis(port=stack.redis.port, client_name="bench-connections", decode_responses=True)}
    if split_broker:
        stack.broker = EmbeddedRedis(directory / "broker", appendonly=False).start()
        stack.env["CELERY_BROKER_URL"] = stack.broker.url
        servers["broker"] = redis.Redis(port=stack.broker.port, client_name="bench-connections", decode_responses=True)
    flower_port = free_port() if flower else None
    try:
        for name in ("web", "worker", "consumer"):
            stack.start(name)
        if flower_port:
            stack.start("flower", PORT=str(flower_port))
        stack.wait_ready()
        time.sleep(5)  # past start-up: presence, heartbeats, Flower's first inspect
        idle = _count(stack, servers)
        peak: Counter[tuple[str, str]] = Counter()
        peak_total = [0]
        done = threading.Event()

        def sample() -> None:
            while not done.is_set():
                counts = _count(stack, servers)
                for key, count in counts.items():
                    peak[key] = max(peak[key], count)
                peak_total[0] = max(peak_total[0], sum(counts.values()))
                time.sleep(0.2)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        try:
            _load(stack, generations, flower_port)
        finally:
            done.set()
            sampler.join(10)
        return Measurement(idle, peak, peak_total[0])
    finally:
        stack.stop_all()
        stack.stop_servers()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.connections", description=__doc__.split("\n\n")[0])
    parser.add_argument("--generations", type=int, default=150, help="generations at once (default 150)")
    parser.add_argument("--max-connections", type=int, help="REDIS_MAX_CONNECTIONS (default unset)")
    parser.add_argument("--split-broker", action="store_true", help="Celery's broker on a second Redis")
    parser.add_argument("--no-flower", action="store_true", help="run without Flower")
    args = parser.parse_args()
    result = measure(args.generations, args.max_connections, args.split_broker, not args.no_flower)
    print(f"{'redis':8} {'process':9} {'idle':>5} {'busy':>5}")
    for redis_name, process in sorted(set(result.idle) | set(result.busy)):
        idle, busy = result.idle[(redis_name, process)], result.busy[(redis_name, process)]
        print(f"{redis_name:8} {process:9} {idle:>5} {busy:>5}")
    print(f"total idle: {sum(result.idle.values())}, busy (highest at one moment): {result.busy_total}")


if __name__ == "__main__":
    main()

"""web, worker and consumer, started as the Procfile starts them, refuse a Redis older than 6.2 at once, with a
message naming the version found; the Redis servers the tests run on (6.2, 7, a cluster) are accepted."""

from __future__ import annotations

import os
import socketserver
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from bridge.connections import require_redis_version
from tests.support.procfile import ROOT, procfile_commands

pytestmark = pytest.mark.e2e

OLD_VERSION = "6.0.16"


class _OldRedis(socketserver.StreamRequestHandler):
    """Speaks just enough RESP to be a Redis 6.0 to a client that connects and asks ``INFO server``."""

    def handle(self) -> None:
        while line := self.rfile.readline():
            args = [self.rfile.read(int(self.rfile.readline()[1:]) + 2)[:-2] for _ in range(int(line[1:]))]
            command = args[0].upper() if args else b""
            if command == b"HELLO":  # RESP3 handshake: a map
                fields = [b"server", b"redis", b"version", OLD_VERSION.encode(), b"proto", 3, b"id", 1]
                fields += [b"mode", b"standalone", b"role", b"master", b"modules", []]
                reply = b"%%%d\r\n" % (len(fields) // 2) + b"".join(_resp(field) for field in fields)
            elif command == b"INFO":
                reply = _resp(f"# Server\r\nredis_version:{OLD_VERSION}\r\n".encode(), bulk=True)
            elif command == b"PING":
                reply = b"+PONG\r\n"
            else:  # CLIENT SETNAME, CLIENT SETINFO, …
                reply = b"+OK\r\n"
            self.wfile.write(reply)


def _resp(value: object, *, bulk: bool = False) -> bytes:
    if isinstance(value, int):
        return b":%d\r\n" % value
    if isinstance(value, list):
        return b"*%d\r\n" % len(value) + b"".join(_resp(item) for item in value)
    assert isinstance(value, bytes)
    return b"$%d\r\n%s\r\n" % (len(value), value) if bulk else b"+%s\r\n" % value


@pytest.fixture(scope="module")
def old_redis() -> Iterator[str]:
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _OldRedis)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"redis://127.0.0.1:{server.server_address[1]}/0"
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("name", ["web", "worker", "consumer"])
def test_each_process_refuses_a_redis_older_than_6_2_at_start(old_redis: str, name: str) -> None:
    # Given a Redis 6.0 (no XAUTOCLAIM) as REDIS_URL, and the broker too
    env = {
        **os.environ,
        "REDIS_URL": old_redis,
        "API_KEYS": "k",
        "SECRET_KEY": "s",
        "LOG_FORMAT": "text",
        "WEB_CONCURRENCY": "1",
        "PORT": "0",
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    env.pop("CELERY_BROKER_URL", None)
    # When the process starts as the Procfile starts it
    result = subprocess.run(
        ["sh", "-c", procfile_commands()[name]], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    # Then it stops at once, saying which version it found and which it needs
    assert result.returncode != 0
    assert f"is version {OLD_VERSION}; tokenbridge needs Redis 6.2 or newer" in result.stdout + result.stderr


def test_the_redis_servers_the_tests_run_on_are_accepted(r: redis.Redis) -> None:
    require_redis_version(r)


def test_every_node_of_a_real_cluster_is_accepted(rc: redis.Redis) -> None:
    require_redis_version(rc)

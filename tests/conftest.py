"""Fixtures: every Redis a test uses is a server the fixture started itself, on a free loopback port."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import redis

from bridge.connections import close
from bridge.embedded import EmbeddedRedis, embedded_binary
from bridge.settings import Settings
from tests.support.cluster import EmbeddedCluster, cluster_unavailable

if TYPE_CHECKING:
    from playwright.sync_api import Browser


def _redis_binaries() -> list[tuple[str, str]]:
    """The embedded 6.2 always; the system's redis-server too when it is a 7.x."""
    found = [("redis6", embedded_binary())]
    candidates = [os.environ.get("TOKENBRIDGE_TEST_REDIS7", "")]
    # Every redis-server on PATH: a virtualenv's bin may hold the embedded 6.2 copy first.
    candidates += [os.path.join(d, "redis-server") for d in os.environ.get("PATH", "").split(os.pathsep)]
    candidates.append("/usr/bin/redis-server")
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK):
            out = subprocess.run([candidate, "--version"], capture_output=True, text=True).stdout
            if "v=7." in out or "v=8." in out:
                found.append(("redis7", candidate))
                break
    return found


_BINARIES = _redis_binaries()

# Settings of every test: short waits, so that a test that waits does not wait long.
_FAST: dict[str, Any] = {
    "secret_key": "test-secret",
    "api_keys": "test-key",
    "log_format": "text",
    "consumer_block_ms": 100,
    "consumer_heartbeat_ms": 100,
    "consumer_claim_idle_ms": 500,
    "hub_block_ms": 500,
}


@pytest.fixture(scope="session", params=[b for _, b in _BINARIES], ids=[n for n, _ in _BINARIES])
def redis_server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedis]:
    server = EmbeddedRedis(tmp_path_factory.mktemp("redis"), binary=request.param, appendonly=False).start()
    yield server
    server.stop()


@pytest.fixture(scope="session", params=[b for _, b in _BINARIES], ids=[f"{n}-cluster" for n, _ in _BINARIES])
def redis_cluster(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[EmbeddedCluster]:
    """A 3-master Redis Cluster on loopback, started by ``redis-cli --cluster create``."""
    binary: str = request.param
    reason = cluster_unavailable(binary)
    if reason:
        pytest.skip(reason)
    cluster = EmbeddedCluster(tmp_path_factory.mktemp("cluster"), binary=binary)
    yield cluster.start()
    cluster.stop()


@pytest.fixture
def rc(redis_cluster: EmbeddedCluster) -> Iterator[redis.Redis]:
    """A cluster client on a cluster this test session started, emptied before each test."""
    client = redis.RedisCluster.from_url(redis_cluster.url, decode_responses=True)
    client.flushall(target_nodes=redis.RedisCluster.PRIMARIES)
    yield client  # type: ignore[misc]
    close(client)  # type: ignore[arg-type]


@pytest.fixture
def cluster_settings(redis_cluster: EmbeddedCluster) -> Settings:
    return Settings(redis_url=redis_cluster.url, redis_cluster=True, celery_broker_url="memory://", **_FAST)


@pytest.fixture
def r(redis_server: EmbeddedRedis) -> Iterator[redis.Redis]:
    """A client on a server this test session started, emptied before each test."""
    client = redis.Redis.from_url(redis_server.url, decode_responses=True)
    client.flushall()
    yield client
    client.close()


@pytest.fixture
def make_settings(redis_server: EmbeddedRedis) -> Callable[..., Settings]:
    def create(**overrides: object) -> Settings:
        values: dict[str, object] = {"redis_url": redis_server.url, **_FAST}
        values.update(overrides)
        return Settings(**values)  # type: ignore[arg-type]

    return create


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings()


@pytest.fixture
def artifacts_dir() -> Path:
    path = Path(__file__).resolve().parent.parent / "test-artifacts"
    path.mkdir(exist_ok=True)
    return path


@pytest.fixture(scope="session")
def browser() -> Iterator[Browser]:
    """One Chromium for every browser test of the session (Playwright's sync API allows one per thread)."""
    from tests.browser.support import chromium, missing

    reason = missing()
    if reason:
        pytest.skip(reason)
    with chromium() as launched:
        yield launched

"""Every process refuses a Redis older than MIN_REDIS_VERSION at start, naming the version it found."""

from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import redis

from bridge.connections import MIN_REDIS_VERSION, require_redis_version
from bridge.errors import RedisVersionError


def _redis_answering(monkeypatch: pytest.MonkeyPatch, reply: dict[str, Any] | Exception) -> redis.Redis:
    """A client of redis.example:6380 whose ``INFO server`` gets ``reply`` (or raises it)."""
    client = redis.Redis(host="redis.example", port=6380)

    def info(section: str | None = None, *args: Any, **kwargs: Any) -> dict[str, Any]:
        assert section == "server"
        if isinstance(reply, Exception):
            raise reply
        return reply

    monkeypatch.setattr(client, "info", info)
    return client


def test_the_minimum_is_6_2_and_the_deploy_docs_say_so() -> None:
    assert MIN_REDIS_VERSION == (6, 2)
    root = Path(__file__).resolve().parents[2]
    assert "Redis 6.2 or newer" in (root / "docs" / "deploy.md").read_text(encoding="utf-8")
    assert "Redis (6.2 or newer)" in (root / "README.md").read_text(encoding="utf-8")


@pytest.mark.parametrize("version", ["6.2.0", "6.2.14", "7.0.15", "7.4.1", "8.0.2", "10.0.0"])
def test_a_redis_of_6_2_or_newer_is_accepted(monkeypatch: pytest.MonkeyPatch, version: str) -> None:
    require_redis_version(_redis_answering(monkeypatch, {"redis_version": version, "redis_mode": "standalone"}))


@pytest.mark.parametrize("version", ["6.0.16", "5.0.7", "4.0.14"])
def test_an_older_redis_is_refused_with_the_version_found(monkeypatch: pytest.MonkeyPatch, version: str) -> None:
    with pytest.raises(RedisVersionError) as refused:
        require_redis_version(_redis_answering(monkeypatch, {"redis_version": version}))
    message = str(refused.value)
    assert f"redis.example:6380 is version {version}" in message
    assert "needs Redis 6.2 or newer" in message


@pytest.mark.parametrize(
    "error", [redis.ConnectionError("Connection refused"), redis.ResponseError("NOPERM this user has no INFO")]
)
def test_a_version_that_cannot_be_read_is_a_warning_not_a_refusal(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, error: Exception
) -> None:
    # Redis down at start (the process retries later as it always does), or an ACL user without INFO
    with caplog.at_level(logging.WARNING, logger="bridge.connections"):
        require_redis_version(_redis_answering(monkeypatch, error))
    assert "needs Redis 6.2 or newer" in caplog.text
    assert str(error) in caplog.text


class _Cluster(redis.RedisCluster):
    """A RedisCluster whose nodes answer INFO with the given versions, without a network."""

    def __init__(self, versions: dict[str, str]) -> None:
        self.versions = versions

    def get_nodes(self) -> list[Any]:
        return [SimpleNamespace(name=name) for name in self.versions]

    def info(self, section: str | None = None, *args: Any, target_nodes: Any = None, **kwargs: Any) -> Any:
        return {"redis_version": self.versions[target_nodes.name]}

    def close(self) -> None:
        pass

    def __del__(self) -> None:
        pass


def test_every_node_of_a_cluster_is_checked() -> None:
    require_redis_version(_Cluster({"10.0.0.1:7000": "7.0.15", "10.0.0.2:7000": "7.0.15"}))  # type: ignore[arg-type]
    with pytest.raises(RedisVersionError, match=r"10\.0\.0\.2:7000 is version 6\.0\.9"):
        require_redis_version(_Cluster({"10.0.0.1:7000": "7.0.15", "10.0.0.2:7000": "6.0.9"}))  # type: ignore[arg-type]

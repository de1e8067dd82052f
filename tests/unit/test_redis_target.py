"""``Settings.redis``: the one object every Redis client of streams and state is built from, read from the same
environment variables as ever."""

from __future__ import annotations

import dataclasses

import pytest

from bridge.connections import SentinelBlockingConnectionPool, redis_client
from bridge.settings import Settings
from bridge.settings.redis import RedisTarget


@pytest.fixture(autouse=True)
def no_redis_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only what each test sets: no REDIS_* variable of the machine's environment."""
    for name in Settings.model_fields:
        if name.startswith("redis_") or name == "celery_broker_url":
            monkeypatch.delenv(name.upper(), raising=False)


def test_redis_url_is_taken_as_it_is(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", "redis://:pw@cache:6380/2")
    monkeypatch.setenv("REDIS_HOST", "ignored")
    monkeypatch.setenv("REDIS_MAX_CONNECTIONS", "12")
    assert Settings().redis == RedisTarget(url="redis://:pw@cache:6380/2", max_connections=12)


def test_without_redis_url_host_port_password_and_db_make_the_url(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {"REDIS_HOST": "cache.internal", "REDIS_PORT": "6380", "REDIS_PASSWORD": "p@ss/word"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("REDIS_DB", "2")
    target = Settings().redis
    assert target.url == "redis://:p%40ss%2Fword@cache.internal:6380/2"
    assert not target.cluster and target.sentinels == () and target.max_connections is None


def test_without_any_redis_setting_it_is_the_local_default() -> None:
    assert Settings().redis == RedisTarget(url="redis://localhost:6379/0")


def test_redis_ssl_cert_reqs_is_applied_to_the_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", "rediss://h:6380/0")
    monkeypatch.setenv("REDIS_SSL_CERT_REQS", "none")
    assert Settings().redis.url == "rediss://h:6380/0?ssl_cert_reqs=none"


def test_sentinels_their_master_and_password(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", "redis://:pw@ignored:1/3")
    monkeypatch.setenv("REDIS_SENTINELS", "s1:26379, [::1]:26380")
    monkeypatch.setenv("REDIS_SENTINEL_MASTER", "main")
    monkeypatch.setenv("REDIS_SENTINEL_PASSWORD", "sent")
    target = Settings().redis
    assert target == RedisTarget(
        url="redis://:pw@ignored:1/3",
        sentinels=(("s1", 26379), ("::1", 26380)),
        sentinel_master="main",
        sentinel_password="sent",
    )
    client = redis_client(target, max_connections=7)
    pool = client.connection_pool
    assert isinstance(pool, SentinelBlockingConnectionPool) and pool.service_name == "main"
    client.close()


def test_a_cluster(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", "redis://10.0.0.1:7000")
    monkeypatch.setenv("REDIS_CLUSTER", "1")
    monkeypatch.setenv("CELERY_BROKER_URL", "amqp://b//")
    assert Settings().redis == RedisTarget(url="redis://10.0.0.1:7000", cluster=True)


def test_it_is_built_once_and_cannot_be_changed() -> None:
    settings = Settings(redis_url="redis://h:1/0")
    assert settings.redis is settings.redis
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.redis.url = "redis://elsewhere:1/0"  # type: ignore[misc]


def test_a_copy_with_other_redis_settings_gets_its_own() -> None:
    settings = Settings(redis_url="redis://h:1/0")
    assert settings.redis.url == settings.broker_url == "redis://h:1/0"
    copy = settings.model_copy(update={"redis_url": "redis://other:2/0"})
    assert copy.redis.url == copy.broker_url == "redis://other:2/0"
    assert settings.redis.url == "redis://h:1/0"


def test_its_repr_shows_no_password() -> None:
    target = Settings(redis_url="redis://:secret@h:1/0", redis_sentinels="s:1", redis_sentinel_password="s3cret").redis
    assert "secret" not in repr(target) and "s3cret" not in repr(target)

"""Sentinel settings: the sentinels' addresses, Celery's `sentinel://` broker, and the client of the master."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from bridge.connections import SentinelBlockingConnectionPool, redis_client
from bridge.settings import Settings
from bridge.task_queue import broker_transport_options


def test_sentinels_name_the_broker_and_its_master() -> None:
    settings = Settings(
        redis_url="redis://:p%40ss@ignored:1/2",
        redis_sentinels="s1:26379, s2:26380",
        redis_sentinel_master="main",
        redis_sentinel_password="sent",
    )
    assert settings.sentinel_addresses == [("s1", 26379), ("s2", 26380)]
    assert settings.broker_url == "sentinel://:p%40ss@s1:26379/2;sentinel://:p%40ss@s2:26380/2"
    options = broker_transport_options(settings)
    assert options["master_name"] == "main" and options["sentinel_kwargs"] == {"password": "sent"}


def test_without_sentinels_nothing_changes() -> None:
    settings = Settings(redis_url="redis://h:1/0")
    assert settings.sentinel_addresses == [] and settings.broker_url == "redis://h:1/0"
    assert "master_name" not in broker_transport_options(settings)
    # An explicit broker wins over the sentinels
    explicit = Settings(redis_sentinels="s1:1", celery_broker_url="amqp://rabbit//")
    assert explicit.broker_url == "amqp://rabbit//" and "master_name" not in broker_transport_options(explicit)


@pytest.mark.parametrize("sentinels", ["s1", "s1:port", ":26379"])
def test_a_malformed_sentinel_address_stops_the_process(sentinels: str) -> None:
    with pytest.raises(ValidationError, match="host:port"):
        Settings(redis_sentinels=sentinels)


def test_sentinels_and_a_cluster_exclude_each_other() -> None:
    with pytest.raises(ValidationError, match="exclude"):
        Settings(redis_sentinels="s1:1", redis_cluster=True, celery_broker_url="redis://b/0")


def test_the_client_asks_the_sentinels_for_the_master_with_a_bounded_pool() -> None:
    settings = Settings(redis_url="redis://:pw@ignored/3", redis_sentinels="s1:1", redis_sentinel_master="main")
    client = redis_client(settings.redis, max_connections=7)
    pool = client.connection_pool
    assert isinstance(pool, SentinelBlockingConnectionPool)
    assert pool.service_name == "main" and pool.max_connections == 7
    assert pool.connection_kwargs["password"] == "pw" and pool.connection_kwargs["db"] == 3
    client.close()

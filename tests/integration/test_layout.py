"""The Redis layout version: recorded by the first process to start, and any other refused with a clear error."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
import redis

from bridge import keys
from bridge.connections import redis_client
from bridge.errors import RedisLayoutError
from bridge.layout import LAYOUT_VERSION, UPGRADE_NOTE, recorded_layout, require_layout_version
from bridge.settings import Settings
from bridge.version import VERSION


# The session's Redis servers serve later tests' processes: none may find a layout a test here left.
@pytest.fixture
def r(r: redis.Redis) -> Iterator[redis.Redis]:
    yield r
    r.delete(keys.LAYOUT)


@pytest.fixture
def rc(rc: redis.Redis) -> Iterator[redis.Redis]:
    yield rc
    rc.delete(keys.LAYOUT)


def test_an_empty_redis_is_given_this_layout_version(r: redis.Redis) -> None:
    # Given a Redis that holds no layout version
    assert r.get(keys.LAYOUT) is None
    # When a process starts on it
    require_layout_version(r)
    # Then it records the layout this release uses, and keeps it with no expiry
    assert r.get(keys.LAYOUT) == str(LAYOUT_VERSION)
    assert r.ttl(keys.LAYOUT) == -1


def test_the_same_layout_is_accepted_at_every_start(r: redis.Redis) -> None:
    r.set(keys.LAYOUT, LAYOUT_VERSION)
    require_layout_version(r)
    require_layout_version(r)
    assert r.get(keys.LAYOUT) == str(LAYOUT_VERSION)


@pytest.mark.parametrize(("found", "written_by"), [(LAYOUT_VERSION + 1, "a newer"), (LAYOUT_VERSION - 1, "an older")])
def test_another_layout_is_refused_naming_both_versions(r: redis.Redis, found: int, written_by: str) -> None:
    # Given a Redis whose data another release wrote in another layout
    r.set(keys.LAYOUT, found)
    # When a process of this release starts on it
    with pytest.raises(RedisLayoutError) as refused:
        require_layout_version(r)
    # Then it refuses, naming the layout found, its own, its version and the upgrade note, and changes nothing
    message = str(refused.value)
    assert f"layout version {found}, written by {written_by} tokenbridge" in message
    assert f"tokenbridge {VERSION} uses Redis layout version {LAYOUT_VERSION}" in message
    assert UPGRADE_NOTE in message
    assert r.get(keys.LAYOUT) == str(found)


def test_a_value_that_is_no_layout_version_is_refused(r: redis.Redis) -> None:
    r.set(keys.LAYOUT, "banana")
    with pytest.raises(RedisLayoutError, match=r"an unknown Redis layout \(llm:layout is 'banana'\)"):
        require_layout_version(r)


def test_a_client_without_decoded_responses_reads_the_same(r: redis.Redis) -> None:
    raw = redis.Redis(
        connection_pool=redis.ConnectionPool(**{**r.connection_pool.connection_kwargs, "decode_responses": False})
    )
    try:
        assert recorded_layout(raw) == str(LAYOUT_VERSION)
        assert recorded_layout(raw) == str(LAYOUT_VERSION)  # the second time, read back as bytes
    finally:
        raw.close()


def test_a_redis_that_cannot_answer_now_is_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    # Given no Redis listening (a process may start before Redis does; its reads retry later)
    down = redis_client(Settings(redis_url="redis://127.0.0.1:1").redis)
    # When the process checks the layout, it goes on, saying it could not
    with caplog.at_level(logging.WARNING, logger="bridge.layout"):
        require_layout_version(down)
    assert "Could not check the Redis layout version" in caplog.text


def test_a_cluster_records_and_checks_the_layout_on_the_key_s_node(rc: redis.Redis) -> None:
    require_layout_version(rc)
    assert rc.get(keys.LAYOUT) == str(LAYOUT_VERSION)
    rc.set(keys.LAYOUT, LAYOUT_VERSION + 1)
    with pytest.raises(RedisLayoutError):
        require_layout_version(rc)

"""Fixtures of the unit tests."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import fakeredis
import pytest

from tests.unit.test_provider_openai import FakeUpstream, Script


@pytest.fixture
def upstream() -> Iterator[Callable[[Script], FakeUpstream]]:
    """``create(script)``: a local HTTP server answering with ``script``, stopped after the test."""
    servers: list[FakeUpstream] = []

    def create(script: Script) -> FakeUpstream:
        servers.append(FakeUpstream(script))
        return servers[-1]

    yield create
    for server in servers:
        server.stop()


@pytest.fixture
def fake_redis() -> Iterator[fakeredis.FakeRedis]:
    """An empty in-memory Redis of its own (fakeredis; Lua scripts run through lupa), with string replies.

    For pure logic only: anything that blocks, claims or fans out is tested on a real Redis.
    """
    client = fakeredis.FakeRedis(server=fakeredis.FakeServer(), decode_responses=True)
    yield client
    client.close()

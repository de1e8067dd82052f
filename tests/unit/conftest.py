"""Fixtures of the unit tests."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import fakeredis
import pytest
from tokenbridge_client.client import TokenbridgeClient

from tests.support.scripted_server import Responder, ScriptedServer
from tests.support.scripted_upstream import Script, ScriptedUpstream


@pytest.fixture
def upstream() -> Iterator[Callable[[Script], ScriptedUpstream]]:
    """``create(script)``: a local HTTP server answering with ``script``, stopped after the test."""
    servers: list[ScriptedUpstream] = []

    def create(script: Script) -> ScriptedUpstream:
        servers.append(ScriptedUpstream(script))
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


@pytest.fixture
def serve() -> Iterator[Callable[..., ScriptedServer]]:
    """``create(*responders)``: a scripted server (the n-th request gets the n-th responder), stopped after the test."""
    servers: list[ScriptedServer] = []

    def create(*responders: Responder) -> ScriptedServer:
        server = ScriptedServer(*responders).__enter__()
        servers.append(server)
        return server

    yield create
    for server in servers:
        server.__exit__()


@pytest.fixture
def make_client() -> Iterator[Callable[..., TokenbridgeClient]]:
    """``create(url, api_key="k", **tunables)``: a client with a 5 s timeout, closed after the test."""
    clients: list[TokenbridgeClient] = []

    def create(url: str, api_key: str | None = "k", **kw: Any) -> TokenbridgeClient:
        client = TokenbridgeClient(url, api_key, **{"timeout_s": 5.0, **kw})
        clients.append(client)
        return client

    yield create
    for client in clients:
        client.close()


@pytest.fixture
def no_ambient_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No key or URL from the environment, no .tokenbridge/dev.json: each test sets what it needs."""
    for name in ("TOKENBRIDGE_URL", "TOKENBRIDGE_API_KEY", "NO_COLOR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("TERM", "xterm")
    monkeypatch.chdir(tmp_path)

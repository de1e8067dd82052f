"""The backend recipes in examples/ (Flask, FastAPI) against the real stack, through their frameworks' test clients.

What a browser gets from them reads the answer from tokenbridge, and never carries the API key.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.stack import API_KEY, Stack
from tokenbridge.client import TokenbridgeClient, collect_text

pytestmark = pytest.mark.e2e

PROMPT = "Your backend holds the key; the browser reads the stream."


@pytest.fixture(params=["flask", "fastapi"])
def backend(request: pytest.FixtureRequest, stack: Stack) -> Iterator[Any]:
    """A test client of the example backend, configured with the stack's URL and API key."""
    if request.param == "flask":
        import flask_backend

        app = flask_backend.create_app(stack.base_url, API_KEY)
        yield app.test_client()
        app.extensions["tokenbridge"].close()
    else:
        pytest.importorskip("fastapi", reason="fastapi is not installed (pip install -e '.[dev]')")
        import fastapi_backend
        from fastapi.testclient import TestClient

        with TestClient(fastapi_backend.create_app(stack.base_url, API_KEY)) as client:
            yield client


def _json(response: Any) -> Any:
    """The body of a Flask (``.json``, a property) or a FastAPI (``.json()``) test response."""
    return response.json() if callable(response.json) else response.json


def _read(stack: Stack, generation_id: str, token: str) -> str:
    """What a browser does with what it was handed: read the events with the stream token alone."""
    with TokenbridgeClient(stack.base_url, None) as reader:
        return collect_text(reader.stream({"id": generation_id, "stream_token": token}))


def test_an_answer_is_started_and_the_browser_gets_only_what_reads_it(backend: Any, stack: Stack) -> None:
    # When the browser asks the backend for an answer
    response = backend.post("/answers", json={"prompt": PROMPT})
    # Then it gets where to read it and a stream token, and not the API key
    assert response.status_code == 201, response.text
    created = _json(response)
    assert set(created) == {"id", "events_url", "ws_url", "stream_token"}
    assert API_KEY not in response.text
    assert created["events_url"] == f"{stack.base_url}/v1/generations/{created['id']}/events"
    # And what it got reads the whole answer from tokenbridge
    assert _read(stack, created["id"], created["stream_token"]) == PROMPT


def test_a_fresh_stream_token_reads_the_answer(backend: Any, stack: Stack) -> None:
    created = _json(backend.post("/answers", json={"prompt": PROMPT}))
    # When the browser's refreshToken asks the backend for a new token
    response = backend.post(f"/answers/{created['id']}/token")
    # Then it gets one, with its expiry, and it reads the generation
    assert response.status_code == 200, response.text
    fresh = _json(response)
    assert set(fresh) == {"stream_token", "expires_at"}
    assert _read(stack, created["id"], fresh["stream_token"]) == PROMPT


def test_refusals_reach_the_browser_as_json(backend: Any) -> None:
    assert backend.post("/answers", json={"prompt": " "}).status_code == 422
    unknown = backend.post("/answers/gen_does_not_exist/token")
    assert unknown.status_code == 404
    assert _json(unknown)["error"]["code"] == "not_found"


def test_the_page_loads_the_js_client_from_tokenbridge(backend: Any, stack: Stack) -> None:
    page = backend.get("/")
    assert page.status_code == 200
    assert f'<script src="{stack.base_url}/static/tokenbridge.js"></script>' in page.text
    assert "127.0.0.1:8000" not in page.text

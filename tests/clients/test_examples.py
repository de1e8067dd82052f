"""The backend recipes in examples/ (Flask, FastAPI) against the real stack, through their frameworks' test clients.

What a browser gets from them reads the answer from tokenbridge, and never carries the API key. The README's
snippets are marked regions of these examples (tests/clients/test_browser.py runs the page in Chromium).
"""

from __future__ import annotations

import re
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from tokenbridge_client.client import TokenbridgeClient, collect_text

from tests.support.procfile import ROOT
from tests.support.stack import API_KEY, Stack

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
    assert '<script src="tokenbridge.js"></script>' in page.text
    assert "127.0.0.1" not in page.text and API_KEY not in page.text
    # The backend sends the browser to tokenbridge's own copy of the client, at its public address.
    moved = backend.get("/tokenbridge.js", follow_redirects=False)
    assert moved.status_code in (302, 307)
    assert moved.headers["location"] == f"{stack.base_url}/static/tokenbridge.js"
    script = httpx.get(moved.headers["location"], timeout=10)
    assert script.status_code == 200 and "Tokenbridge" in script.text


# -- The README shows these examples' code --------------------------------------------------------

README = ROOT / "README.md"
# A README code block that is a region of an example: `<!-- --8<-- path:name -->` on the line before its fence.
EXCERPT = re.compile(
    r"<!-- --8<-- (?P<path>[\w./-]+):(?P<name>\w+) -->\n(?P<indent> *)```\w*\n(?P<code>.*?)\n(?P=indent)```", re.S
)


def region(path: Path, name: str) -> str:
    """The lines between ``--8<-- [start:name]`` and ``--8<-- [end:name]`` of ``path``, dedented."""
    lines = path.read_text(encoding="utf-8").splitlines()
    start = next(i for i, line in enumerate(lines) if f"--8<-- [start:{name}]" in line)
    end = next(i for i, line in enumerate(lines) if f"--8<-- [end:{name}]" in line)
    return textwrap.dedent("\n".join(lines[start + 1 : end])).strip("\n")


def _lines(code: str) -> str:
    """``code`` with each run of blank lines as one: ruff formats the README's Python as top-level code, two blank
    lines between functions, where the example has one between the functions nested in ``create_app``."""
    return re.sub(r"\n{3,}", "\n\n", code)


def test_each_readme_snippet_is_the_marked_region_of_its_example() -> None:
    excerpts = list(EXCERPT.finditer(README.read_text(encoding="utf-8")))
    assert {(m["path"], m["name"]) for m in excerpts} == {
        ("examples/flask_backend.py", "backend"),
        ("examples/chat.html", "page"),
    }
    for m in excerpts:
        shown, example = textwrap.dedent(m["code"]), region(ROOT / m["path"], m["name"])
        assert _lines(shown) == _lines(example), f"README differs from {m['path']}:{m['name']}"


def test_every_code_block_of_use_it_from_your_app_is_an_example_s_region() -> None:
    section = README.read_text(encoding="utf-8").split("## Use it from your app", 1)[1].split("\n## ", 1)[0]
    fences = [line for line in section.splitlines() if line.strip().startswith("```")]
    assert len(fences) == 2 * len(EXCERPT.findall(section))

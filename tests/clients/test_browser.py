"""In Chromium: examples/chat.html behind the Flask recipe, and the JS client imported as an ES module."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import pytest
from flask import Flask, Response
from werkzeug.serving import make_server

from app.client_module import module
from tests.browser.support import checked_page, expired_token, missing
from tests.clients.conftest import APP_ORIGIN, APP_PORT
from tests.support.stack import API_KEY, Stack

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page, Route

reason = missing()
if reason:
    pytest.skip(reason, allow_module_level=True)

pytestmark = [pytest.mark.browser, pytest.mark.e2e]

PROMPT = "The page asks its backend, then reads the answer from tokenbridge."


@contextmanager
def _serving(app: Flask) -> Iterator[str]:
    """A WSGI app on a real loopback server, at the origin the stack allows (CORS_ORIGINS)."""
    server = make_server("127.0.0.1", APP_PORT, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield APP_ORIGIN
    finally:
        server.shutdown()
        thread.join(10)
        server.server_close()


@pytest.fixture
def backend(stack: Stack) -> Iterator[str]:
    """examples/flask_backend.py, serving examples/chat.html."""
    import flask_backend

    app = flask_backend.create_app(stack.base_url, API_KEY)
    with _serving(app) as origin:
        yield origin
    app.extensions["tokenbridge"].close()


@pytest.fixture
def app_with_module() -> Iterator[str]:
    """An app's page that imports the client as an ES module, from its own copy (what a bundler would ship)."""
    app = Flask(__name__)
    app.add_url_rule("/module.html", "page", lambda: Response(MODULE_PAGE, mimetype="text/html"))
    app.add_url_rule("/tokenbridge.mjs", "module", lambda: Response(module()[0], mimetype="text/javascript"))
    with _serving(app) as origin:
        yield origin


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    with checked_page(browser) as page:
        yield page


def _ask(page: Page, prompt: str) -> None:
    page.fill("input[name=prompt]", prompt)
    page.click("button:text('Ask')")
    page.wait_for_selector("#status[data-state=done]")


def test_the_chat_page_streams_an_answer_through_its_backend(page: Page, backend: str) -> None:
    # Given the page, served by the backend that holds the API key
    requests: list[str] = []
    page.on("request", lambda request: requests.append(request.url))
    page.goto(backend + "/")
    # When a question is asked
    _ask(page, PROMPT)
    # Then the whole answer is shown, and the API key went nowhere near the browser
    assert page.text_content("#answer") == PROMPT
    assert API_KEY not in page.content()
    assert not [url for url in requests if API_KEY in url]


def test_the_chat_page_gets_a_fresh_token_from_its_backend(page: Page, backend: str, stack: Stack) -> None:
    # Given a backend answer whose stream token has expired by the time the browser uses it
    def expire(route: Route) -> None:
        response = route.fetch()
        created = response.json()
        created["stream_token"] = expired_token(stack, created["id"])
        route.fulfill(response=response, json=created)

    refreshed: list[str] = []
    page.route(backend + "/answers", expire)
    page.on("request", lambda request: refreshed.append(request.url) if request.url.endswith("/token") else None)
    page.goto(backend + "/")
    # When a question is asked
    _ask(page, PROMPT)
    # Then the page asked its backend for a new token once, and the answer arrived whole
    assert len(refreshed) == 1
    assert page.text_content("#answer") == PROMPT


MODULE_PAGE = """<!doctype html>
<script type="module">
  import { socket, stream, version } from "./tokenbridge.mjs";
  window.tokenbridgeModule = { socket, stream, version, globalDefined: "Tokenbridge" in window };
</script>
"""

READ = """([transport, created]) => new Promise((resolve) => {
  const { stream, socket } = window.tokenbridgeModule;
  const opts = {
    eventsUrl: created.events_url, wsUrl: created.ws_url, token: created.stream_token,
    onDone: (event, handle) => resolve({ text: handle.text, status: handle.status }),
    onError: (error) => resolve({ error: error.code }),
    maxRetries: 2,
  };
  transport === "sse" ? stream(opts) : socket(opts);
})"""


@pytest.mark.parametrize("transport", ["sse", "ws"])
def test_the_es_module_reads_an_answer(page: Page, app_with_module: str, stack: Stack, transport: str) -> None:
    # Given an app's page that imports the client as an ES module
    page.goto(app_with_module + "/module.html")
    page.wait_for_function("window.tokenbridgeModule !== undefined")
    module: dict[str, Any] = page.evaluate(
        "({version: tokenbridgeModule.version, global: tokenbridgeModule.globalDefined})"
    )
    assert module == {"version": "1", "global": False}
    # When it reads a generation from tokenbridge with the stream token
    created = stack.create(model="echo", prompt=PROMPT, options={"delay_ms": 5})
    urls = {**created, "events_url": stack.url(created["events_url"]), "ws_url": stack.url(created["ws_url"])}
    result = page.evaluate(READ, [transport, urls])
    # Then the whole answer arrives
    assert result == {"text": PROMPT, "status": "done"}

"""A page in Chromium reads a running generation with the Durable Streams protocol's own npm client, no tokenbridge
code in the page: part of it, then, from the offset it saved, live over SSE to the stream's close."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

from tests.browser.support import missing, screenshot_path
from tests.support import npm
from tests.support.stack import API_KEY, Stack

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Route

reason = missing()
if reason:
    pytest.skip(reason, allow_module_level=True)

pytestmark = [pytest.mark.browser, pytest.mark.e2e]

PROMPT = "A browser reads this answer with a client that knows nothing of tokenbridge, and resumes it."
PAGE = "<!doctype html><title>Durable Streams reader</title><pre id=out></pre>"
# Run in the page: the client module, served from the page's own origin (the stack's web), as any page imports it.
READER = """
async ([url, key]) => {
  const { stream } = await import("/durable-streams-test/client.js");
  const headers = { Authorization: `Bearer ${key}` };
  const first = await stream({ url, headers, offset: "-1", live: false });
  const before = await first.json();
  const saved = first.offset;
  const rest = await stream({ url, headers, offset: saved, live: "sse" });
  const after = [];
  await new Promise((resolve, reject) => {
    rest.subscribeJson(async (batch) => {
      after.push(...batch.items);
      if (batch.streamClosed) resolve();
    });
    rest.closed.catch(reject);
  });
  document.getElementById("out").textContent = after.map((m) => m.data.content || "").join("");
  return { before, saved, after, closed: rest.streamClosed };
}
"""


def test_chromium_reads_a_running_generation_with_the_protocols_client_and_resumes_it(
    browser: Browser, stack: Stack, tmp_path_factory: pytest.TempPathFactory
) -> None:
    modules = npm.install(npm.DURABLE_STREAMS_CLIENT, tmp_path_factory.mktemp("durable-streams-browser"))
    client = (modules / "@durable-streams" / "client" / "dist" / "index.js").read_text()
    # Given a page on the stack's origin that imports the npm client (an ES module without imports of its own)
    context = browser.new_context(base_url=stack.base_url)
    context.set_default_timeout(20_000)

    def serve(route: Route) -> None:
        if route.request.url.endswith("/client.js"):
            route.fulfill(body=client, content_type="text/javascript")
        else:
            route.fulfill(body=PAGE, content_type="text/html")

    context.route("**/durable-streams-test/**", serve)
    page = context.new_page()
    try:
        page.goto("/durable-streams-test/")
        # When it reads a running answer, saves its offset, and resumes live from it
        created = stack.create(model="echo", prompt=PROMPT, options={"delay_ms": 40})
        url = stack.url(f"/v1/stream/generations/{created['id']}")
        result: dict[str, Any] = page.evaluate(READER, [url, API_KEY])
        page.screenshot(path=str(screenshot_path("durable-streams-reader")))
    finally:
        context.close()
    # Then the two reads are the whole answer, each event once, and the client saw the stream close
    whole = stack.get(f"/v1/stream/generations/{created['id']}").json()
    assert result["before"] + result["after"] == whole
    assert result["after"] and result["after"][-1]["event"] == "done" and result["closed"]
    text = "".join(m["data"]["content"] for m in whole if m["event"] == "token")
    assert text == PROMPT

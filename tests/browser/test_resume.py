"""The demo's readers survive the death of the web process they read from: they resume on its replacement."""

from __future__ import annotations

import signal
from typing import TYPE_CHECKING

import httpx
import pytest

from bridge.embedded import free_port
from tests.browser.support import missing, screenshot_path
from tests.support import quietly, wait_for
from tests.support.stack import API_KEY, Stack

if TYPE_CHECKING:
    from playwright.sync_api import Browser

reason = missing()
if reason:
    pytest.skip(reason, allow_module_level=True)

pytestmark = [pytest.mark.browser, pytest.mark.e2e]


def _start_web(stack: Stack, name: str, port: int) -> None:
    stack.start(name, "web", PORT=str(port))
    healthy = quietly(
        lambda: httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200, httpx.HTTPError
    )
    wait_for(healthy, timeout_s=30, interval_s=0.1, message=f"{name} did not answer on port {port}")


@pytest.mark.parametrize("transport", ["sse", "ws"])
def test_a_reader_resumes_after_its_web_process_is_killed(browser: Browser, stack: Stack, transport: str) -> None:
    # Given a web process of its own, and the demo reading a slow answer from it
    port = free_port()
    _start_web(stack, f"web-{transport}-1", port)
    context = browser.new_context(base_url=f"http://127.0.0.1:{port}", viewport={"width": 1200, "height": 860})
    context.set_default_timeout(15_000)
    page = context.new_page()
    try:
        page.goto(f"/#key={API_KEY}")
        prompt = " ".join(f"word{i}" for i in range(40))
        page.fill("#prompt", prompt)
        page.fill("#delay", "60")
        page.check(f'input[name="transport"][value="{transport}"]', force=True)
        page.click("#send")
        page.wait_for_function("document.getElementById('answer').textContent.split(' ').length > 6")

        # When that process is killed, and a new one starts on the same port a moment later
        stack.kill(f"web-{transport}-1")
        page.wait_for_selector('#status[data-state="reconnecting"]')
        _start_web(stack, f"web-{transport}-2", port)

        # Then the reader resumes from its last event and ends with exactly the text
        page.wait_for_selector('#status[data-state="done"]', timeout=30_000)
        assert page.inner_text("#answer") == prompt
        page.screenshot(path=str(screenshot_path(f"demo-resumed-after-kill-{transport}")))
    finally:
        context.close()
        if f"web-{transport}-2" in stack.processes:
            stack.signal(f"web-{transport}-2", signal.SIGTERM)

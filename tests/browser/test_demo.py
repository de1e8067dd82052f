"""The chat demo at ``/`` in Chromium: streaming, reload mid-answer, Stop, WebSocket, and a client that never loops."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

from tests.browser.support import missing, publish, screenshot_path
from tests.support import holds_for
from tests.support.stack import API_KEY, Stack

if TYPE_CHECKING:
    from playwright.sync_api import Page, WebSocket

reason = missing()
if reason:
    pytest.skip(reason, allow_module_level=True)

pytestmark = [pytest.mark.browser, pytest.mark.e2e]


def _prompt(words: int) -> str:
    return " ".join(f"token{i}" for i in range(words)) + " end."


def _open(page: Page) -> None:
    page.goto(f"/#key={API_KEY}")
    page.wait_for_selector("#send:enabled")


def _send(page: Page, prompt: str, *, delay_ms: int, transport: str = "sse") -> None:
    page.fill("#prompt", prompt)
    page.select_option("#model", "echo")
    page.fill("#delay", str(delay_ms))
    page.check(f'input[name="transport"][value="{transport}"]', force=True)
    page.click("#send")


def _wait_for_words(page: Page, count: int) -> None:
    page.wait_for_function(
        "n => document.getElementById('answer').textContent.split(' ').length > n", arg=count, timeout=10_000
    )


def _wait_for_state(page: Page, state: str) -> None:
    page.wait_for_selector(f'#status[data-state="{state}"]', timeout=15_000)


def test_a_prompt_streams_and_the_full_text_appears(page: Page) -> None:
    # Given the demo with an API key from the #key= fragment
    _open(page)
    assert page.evaluate("localStorage.getItem('tokenbridge.key')") == API_KEY
    assert "#key" not in page.url
    prompt = _prompt(24)

    # When a prompt is sent to echo with a delay between tokens
    _send(page, prompt, delay_ms=60)
    _wait_for_words(page, 8)
    assert page.get_attribute("#answer", "aria-busy") == "true"
    assert page.is_enabled("#stop") and not page.is_enabled("#send")
    mid = screenshot_path("demo-mid-stream")
    page.screenshot(path=str(mid))
    publish(mid, "demo.png")

    # Then the whole text arrives, with time to first token and tokens per second
    _wait_for_state(page, "done")
    assert page.inner_text("#answer") == prompt
    assert page.inner_text("#tokens") == str(len(prompt.split(" ")))
    assert page.inner_text("#ttft").endswith(" ms")
    assert float(page.inner_text("#rate-out")) > 0
    assert page.get_attribute("#answer", "aria-busy") == "false"
    page.screenshot(path=str(screenshot_path("demo-done")))


@pytest.mark.parametrize("transport", ["sse", "ws"])
def test_a_reload_mid_answer_keeps_the_whole_answer(page: Page, stack: Stack, transport: str) -> None:
    # Given an answer streaming slowly
    _open(page)
    prompt = _prompt(30)
    _send(page, prompt, delay_ms=70, transport=transport)
    _wait_for_words(page, 6)
    generation_id = page.inner_text("#generation")

    resumed_from: list[str] = []
    page.on("request", lambda r: resumed_from.append(r.url) if "/events" in r.url else None)
    page.on("websocket", lambda ws: resumed_from.append(ws.url))

    # When the page is reloaded mid-answer
    page.reload()

    # Then it resumes from the stored last event id and ends with exactly the text, once
    _wait_for_state(page, "done")
    assert page.inner_text("#answer") == prompt
    assert page.inner_text("#generation") == generation_id
    assert resumed_from and all("last_event_id=" in url for url in resumed_from), resumed_from
    record = stack.get(f"/v1/generations/{generation_id}").json()
    assert record["text"] == prompt
    page.screenshot(path=str(screenshot_path(f"demo-reloaded-{transport}")))


def test_stop_cancels_the_generation(page: Page, stack: Stack) -> None:
    # Given a long, slow answer
    _open(page)
    prompt = _prompt(60)
    _send(page, prompt, delay_ms=120)
    _wait_for_words(page, 3)

    # When Stop is pressed
    page.click("#stop")

    # Then the stream ends with "stopped", and the answer is a strict prefix of the prompt
    _wait_for_state(page, "stopped")
    answer = page.inner_text("#answer")
    assert len(answer) < len(prompt)
    assert prompt.startswith(answer)
    assert "Stopped" in page.inner_text("#status")
    assert page.is_enabled("#send") and not page.is_enabled("#stop")
    record = stack.get(f"/v1/generations/{page.inner_text('#generation')}").json()
    assert record["status"] == "cancelled"
    page.screenshot(path=str(screenshot_path("demo-stopped")))


def test_the_websocket_toggle_streams_too(page: Page) -> None:
    sockets: list[WebSocket] = []
    event_streams: list[str] = []
    page.on("websocket", lambda ws: sockets.append(ws))
    page.on("request", lambda r: event_streams.append(r.url) if "/events" in r.url else None)

    # Given the WebSocket transport
    _open(page)
    prompt = _prompt(16)
    _send(page, prompt, delay_ms=30, transport="ws")

    # Then the answer arrives over a socket, and no EventSource was opened
    _wait_for_state(page, "done")
    assert page.inner_text("#answer") == prompt
    assert page.inner_text("#transport-out") == "WebSocket"
    assert [s.url.split("?")[0].endswith("/ws") for s in sockets] == [True]
    assert event_streams == []


def test_stop_over_the_websocket_sends_a_cancel(page: Page) -> None:
    frames: list[str] = []
    page.on("websocket", lambda ws: ws.on("framesent", lambda payload: frames.append(str(payload))))
    _open(page)
    _send(page, _prompt(60), delay_ms=120, transport="ws")
    _wait_for_words(page, 3)

    page.click("#stop")

    _wait_for_state(page, "stopped")
    assert any('"cancel"' in frame for frame in frames), frames


def _run_reader(page: Page, kind: str, options: dict[str, Any]) -> dict[str, Any]:
    """Starts a Tokenbridge reader in the page; resolves with its final status, errors and text."""
    result: dict[str, Any] = page.evaluate(
        """([kind, options]) => new Promise((resolve) => {
            const errors = [];
            const statuses = [];
            const finish = (h) => setTimeout(() => resolve({status: h.status, errors, statuses, text: h.text}), 50);
            const handle = Tokenbridge[kind](Object.assign({}, options, {
                onError: (e, h) => { errors.push(e); if (e.fatal) finish(h); },
                onStatus: (s, h) => { statuses.push(s); if (["done", "ended", "cancelled"].includes(s)) finish(h); },
            }));
            setTimeout(() => resolve({status: "timeout: " + handle.status, errors, statuses, text: handle.text}), 8000);
        })""",
        [kind, options],
    )
    return result


def test_the_client_stops_instead_of_looping(page: Page, stack: Stack) -> None:
    # Given a finished generation, and every request the page makes to its stream
    _open(page)
    gen = stack.create(model="echo", prompt="short and done")
    events = stack.events(gen).events
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url) if gen["id"] in r.url else None)

    # When a reader resumes at the terminal event, it learns the generation ended (204) and stops
    ended = _run_reader(
        page,
        "stream",
        {
            "eventsUrl": gen["events_url"],
            "token": gen["stream_token"],
            "lastEventId": events[-1].id,
            "text": "short and done",
        },
    )
    assert ended["status"] == "ended", ended
    assert ended["text"] == "short and done"

    # When a reader has a bad token, over SSE and over WebSocket, it reports the refusal and stops
    refused = _run_reader(page, "stream", {"eventsUrl": gen["events_url"], "token": "not-a-token"})
    assert refused["status"] == "error", refused
    assert [e["code"] for e in refused["errors"]] == ["invalid_token"]
    socket = _run_reader(page, "socket", {"wsUrl": gen["ws_url"], "token": "not-a-token"})
    assert socket["status"] == "error", socket
    assert [e["code"] for e in socket["errors"]] == ["invalid_token"]

    # When a reader starts from the beginning, it gets everything and stops at done
    full = _run_reader(page, "socket", {"wsUrl": gen["ws_url"], "token": gen["stream_token"]})
    assert (full["status"], full["text"]) == ("done", "short and done")

    # Then no reader tried again: one connection and at most one probe each
    holds_for(
        lambda: len(requests) <= 7,
        window_s=1.5,
        why=f"the client's first retry after an error comes 0.5 s after it (its backoff): {requests}",
        step=lambda: page.wait_for_timeout(100),
    )


def test_a_new_tab_finds_the_running_answer_of_its_session(page: Page) -> None:
    # Given an answer streaming slowly in one tab
    _open(page)
    prompt = _prompt(30)
    _send(page, prompt, delay_ms=80)
    _wait_for_words(page, 4)
    # When the same browser opens the demo in a new tab (no answer of its own there)
    other = page.context.new_page()
    other.goto("/")
    # Then that tab finds the session's running answer, reads it from the start and shows it whole
    other.wait_for_selector('#status[data-state="done"]', timeout=15_000)
    assert other.inner_text("#answer") == prompt
    other.close()

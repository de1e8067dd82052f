"""The browser client gathers a model's reasoning and tool calls beside its text, over SSE and WebSocket."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

from bridge.producer import GenerationWriter
from tests.browser.support import missing
from tests.support.stack import Stack

if TYPE_CHECKING:
    from playwright.sync_api import Page

reason = missing()
if reason:
    pytest.skip(reason, allow_module_level=True)

pytestmark = [pytest.mark.browser, pytest.mark.e2e]

READ = """([transport, created]) => new Promise((resolve) => {
  const seen = {reasoning: [], calls: 0};
  const opts = {
    eventsUrl: created.events_url, wsUrl: created.ws_url, token: created.stream_token,
    onReasoning: (content) => seen.reasoning.push(content),
    onToolCall: () => { seen.calls += 1; },
    onDone: (event, handle) => resolve({text: handle.text, reasoning: handle.reasoning,
      toolCalls: handle.toolCalls, pieces: seen.reasoning, calls: seen.calls}),
    onError: (error) => resolve({error: error.code}),
  };
  transport === "sse" ? Tokenbridge.stream(opts) : Tokenbridge.socket(opts);
})"""


@pytest.mark.parametrize("transport", ["sse", "ws"])
def test_reasoning_and_tool_calls_are_gathered_beside_the_text(page: Page, stack: Stack, transport: str) -> None:
    # Given a generation whose model reasons, says a word, then calls a tool in pieces
    created = stack.create(model="external", prompt="weather?")
    with stack.client() as client:
        writer = GenerationWriter(client, created["id"], lease_ms=10_000, max_length=10_000)
        writer.claim()
        writer.write(
            [
                ("reasoning", {"content": "The user wants ", "ts": 1.0}),
                ("reasoning", {"content": "the weather.", "ts": 1.0}),
                ("token", {"content": "Checking.", "ts": 1.0}),
                ("tool_call", {"index": 0, "id": "call_1", "name": "get_weather", "arguments": '{"city"', "ts": 1.0}),
                ("tool_call", {"index": 0, "arguments": ': "Paris"}', "ts": 1.0}),
                ("done", {"finish_reason": "tool_calls", "usage": {}}),
            ]
        )
    # When the page reads it
    page.goto("/")
    result: dict[str, Any] = page.evaluate(READ, [transport, created])
    # Then the text holds only the answer, and the reasoning and the joined call are on the handle
    assert result["text"] == "Checking."
    assert result["reasoning"] == "The user wants the weather." and len(result["pieces"]) == 2
    assert result["toolCalls"] == [{"id": "call_1", "name": "get_weather", "arguments": '{"city": "Paris"}'}]
    assert result["calls"] == 2

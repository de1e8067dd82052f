"""Tool calls through the bridge: an upstream's tool-call deltas reach readers as events, and the official
``openai`` package sees ``tool_calls`` on the OpenAI-compatible route."""

from __future__ import annotations

import json

import pytest
from openai import OpenAI

from tests.support.sse import read_sse
from tests.support.stack import API_KEY, Stack

pytestmark = pytest.mark.e2e

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "search_docs",
            "description": "Search the documentation",
            "parameters": {"type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]},
        },
    }
]


def _client(stack: Stack) -> OpenAI:
    return OpenAI(base_url=stack.url("/v1"), api_key=API_KEY, max_retries=0)


@pytest.mark.parametrize("model", ["fake-gpt", "fake-claude"])
def test_a_tool_call_streams_as_tool_call_events_and_ends_with_tool_calls(stack: Stack, model: str) -> None:
    # Given a generation that offers the model a tool
    gen = stack.create(model=model, messages=[{"role": "user", "content": "find streaming"}], tools=TOOLS)
    # When it is read
    events = read_sse(stack.url(gen["events_url"]), headers=stack.headers).events
    # Then the call comes as tool_call events (id and name first, then the arguments in pieces), in seq order
    calls = [e.data for e in events if e.event == "tool_call"]
    assert calls[0]["name"] == "search_docs" and calls[0]["id"]
    assert json.loads("".join(c["arguments"] for c in calls)) == {"query": "find streaming"}
    assert [e.data["seq"] for e in events] == list(range(len(events)))
    assert events[-1].event == "done" and events[-1].data["finish_reason"] == "tool_calls"
    # And the record's text holds no tool-call JSON
    assert stack.get(f"/v1/generations/{gen['id']}").json()["text"] == ""


@pytest.mark.parametrize("model", ["fake-gpt", "fake-claude"])
def test_the_openai_package_sees_tool_calls_streamed_and_whole(stack: Stack, model: str) -> None:
    messages = [{"role": "user", "content": "find tokens"}]
    with _client(stack) as client:
        # Streamed: deltas joined by index, as the SDK's users do
        arguments, name, reason = "", None, None
        for chunk in client.chat.completions.create(model=model, messages=messages, tools=TOOLS, stream=True):
            for choice in chunk.choices:
                for call in choice.delta.tool_calls or []:
                    name = name or (call.function.name if call.function else None)
                    arguments += (call.function.arguments or "") if call.function else ""
                reason = choice.finish_reason or reason
        assert (name, json.loads(arguments), reason) == ("search_docs", {"query": "find tokens"}, "tool_calls")
        # Whole: one message with its tool_calls
        completion = client.chat.completions.create(model=model, messages=messages, tools=TOOLS)
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    [call] = choice.message.tool_calls or []
    assert call.type == "function" and call.function.name == "search_docs"
    assert json.loads(call.function.arguments) == {"query": "find tokens"}


@pytest.mark.parametrize("model", ["fake-gpt", "fake-claude"])
def test_an_agent_sends_the_tool_result_back_and_gets_the_answer(stack: Stack, model: str) -> None:
    call = {"id": "call_1", "type": "function", "function": {"name": "search_docs", "arguments": '{"query": "x"}'}}
    messages = [
        {"role": "user", "content": "find docs"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": "three pages found"},
    ]
    with _client(stack) as client:
        completion = client.chat.completions.create(model=model, messages=messages, tools=TOOLS)  # type: ignore[arg-type]
    choice = completion.choices[0]
    assert choice.finish_reason == "stop" and not choice.message.tool_calls
    assert choice.message.content

"""OpenAIChatProvider against a real local HTTP server that writes the Chat Completions wire format byte for byte:
what is particular to that format (the transport both HTTP providers share: test_provider_transport.py)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from bridge.errors import ProviderError
from bridge.generation import GenerationRequest
from bridge.models import ModelSpec
from bridge.producer import Chunk, Delta, Finish
from tasks.providers.connections import new_client
from tasks.providers.openai import OpenAIChatProvider
from tasks.providers.sse import iter_events
from tests.support.scripted_upstream import (
    Exchange,
    cut,
    no_watcher_left,
    run,
    split_finish,
    streaming,
)
from tests.support.wire_formats import DONE, KEEP_ALIVE, chat_chunk, usage_chunk


@pytest.fixture
def provider(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., OpenAIChatProvider]]:
    """``create(base_url, **spec_fields)``: a provider on a client that the fixture closes."""
    monkeypatch.setenv("TEST_OPENAI_KEY", "sk-test-123")
    clients: list[httpx.Client] = []

    def create(base_url: str, **fields: Any) -> OpenAIChatProvider:
        spec = ModelSpec.model_validate(
            {"name": "gpt", "provider": "openai", "base_url": base_url, "api_key_env": "TEST_OPENAI_KEY", **fields}
        )
        clients.append(new_client())
        return OpenAIChatProvider(spec, client=clients[-1])

    yield create
    for client in clients:
        client.close()


PROMPT = GenerationRequest(model="gpt", prompt="Say hello")


# ---------------------------------------------------------------------------------------------------------------
# Streams that succeed.


@pytest.mark.parametrize("newline", ["\n", "\r\n"], ids=["lf", "crlf"])
def test_tokens_concatenate_and_finish_and_usage_are_mapped(upstream: Any, provider: Any, newline: str) -> None:
    # Given an upstream that splits a data line across network chunks, sends a keep-alive comment, a role-only
    # delta, an empty content, the usage chunk and [DONE]
    hello = chat_chunk("Hello").replace("\n", newline)

    def script(ex: Exchange) -> None:
        ex.start_stream()
        ex.send(chat_chunk(role="assistant", content="").replace("\n", newline))
        ex.send(*cut(hello, 6, 40, len(hello) - 1))  # the last piece is the second half of the blank line
        ex.send(KEEP_ALIVE.replace("\n", newline))
        ex.send(chat_chunk(", wor").replace("\n", newline) + chat_chunk("ld!").replace("\n", newline))
        ex.send(chat_chunk(finish_reason="stop").replace("\n", newline))
        ex.send(usage_chunk(9, 3).replace("\n", newline), DONE.replace("\n", newline))
        ex.end_stream()

    server = upstream(script)

    # When the provider streams it
    tokens, finish = split_finish(run(provider(server.base_url), PROMPT))

    # Then the tokens are the content pieces and the finish carries the reason and the usage
    assert tokens == ["Hello", ", wor", "ld!"]
    assert "".join(tokens) == "Hello, world!"
    assert finish == Finish("stop", {"prompt_tokens": 9, "completion_tokens": 3})
    assert no_watcher_left()


def test_request_body_and_auth_header_follow_the_request_and_the_spec(upstream: Any, provider: Any) -> None:
    # Given a request with messages and every sampling field, and a spec with an upstream name and headers
    def script(ex: Exchange) -> None:
        ex.start_stream()
        ex.send(chat_chunk("ok", finish_reason="stop"), DONE)
        ex.end_stream()

    server = upstream(script)
    request = GenerationRequest.model_validate(
        {
            "model": "gpt",
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello."},
                {"role": "user", "content": "Again"},
            ],
            "max_tokens": 50,
            "temperature": 0.3,
            "stop": ["END"],
        }
    )
    chat = provider(server.base_url, model="gpt-4o-mini", headers={"OpenAI-Organization": "org-1"})

    # When it streams
    run(chat, request)

    # Then the upstream got exactly those fields, the key from the environment and the extra header
    sent = server.requests[0]
    assert sent.path == "/v1/chat/completions"
    assert sent.body == {
        "model": "gpt-4o-mini",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello."},
            {"role": "user", "content": "Again"},
        ],
        "stream": True,
        "stream_options": {"include_usage": True},
        "max_tokens": 50,
        "temperature": 0.3,
        "stop": ["END"],
    }
    assert sent.headers["authorization"] == "Bearer sk-test-123"
    assert sent.headers["openai-organization"] == "org-1"
    assert sent.headers["accept"] == "text/event-stream"


def test_a_prompt_is_one_user_message_and_without_a_key_no_auth_header_is_sent(upstream: Any, provider: Any) -> None:
    # Given a spec whose key variable is unset, and a spec-level max_tokens
    def script(ex: Exchange) -> None:
        ex.start_stream()
        ex.send(chat_chunk("ok", finish_reason="stop"), DONE)
        ex.end_stream()

    server = upstream(script)

    # When a prompt is streamed
    run(provider(server.base_url, api_key_env="TEST_UNSET_KEY", max_tokens=64), PROMPT)

    # Then it becomes one user message, the spec's max_tokens applies, and no Authorization header is sent
    sent = server.requests[0]
    assert sent.body["messages"] == [{"role": "user", "content": "Say hello"}]
    assert sent.body["model"] == "gpt"
    assert sent.body["max_tokens"] == 64
    assert "temperature" not in sent.body and "stop" not in sent.body
    assert "authorization" not in sent.headers


def test_length_finish_without_usage_and_a_slow_first_token(upstream: Any, provider: Any) -> None:
    # Given an upstream that thinks for a while before its first token and reports no usage
    def script(ex: Exchange) -> None:
        ex.start_stream()
        time.sleep(0.4)  # a fixed wait, the scenario: the upstream thinks before its first token
        ex.send(chat_chunk(role="assistant"), chat_chunk("Once"), chat_chunk(" upon", finish_reason="length"), DONE)
        ex.end_stream()

    server = upstream(script)

    # When it streams
    tokens, finish = split_finish(run(provider(server.base_url, timeout_s=2), PROMPT))

    # Then the tokens come, and the finish has the reason and leaves usage to the caller
    assert tokens == ["Once", " upon"]
    assert finish == Finish("length", {})


# ---------------------------------------------------------------------------------------------------------------
# Failures.


@pytest.mark.parametrize(
    ("error", "retryable"),
    [
        ('{"object":"error","message":"engine died","type":"InternalServerError","param":null,"code":500}', True),
        ('{"object":"error","message":"bad schema","type":"BadRequestError","param":null,"code":400}', False),
    ],
    ids=["5xx", "4xx"],
)
def test_an_error_event_before_the_first_token_is_judged_by_its_code(
    upstream: Any, provider: Any, error: str, retryable: bool
) -> None:
    # Given an upstream (vLLM-style) that answers 200 and then sends an error event before any content
    def script(ex: Exchange) -> None:
        ex.start_stream()
        ex.send(chat_chunk(role="assistant", content=""), f'data: {{"error":{error}}}\n\n')
        ex.end_stream()

    server = upstream(script)

    # When the provider streams
    with pytest.raises(ProviderError) as caught:
        run(provider(server.base_url), PROMPT)

    # Then a server-side error is worth a retry and a request error is not
    assert caught.value.retryable is retryable
    assert caught.value.code == ("provider_unavailable" if retryable else "provider_rejected")


def test_an_error_event_after_tokens_is_a_final_provider_error(upstream: Any, provider: Any) -> None:
    # Given an upstream that fails mid-answer with an error event
    def script(ex: Exchange) -> None:
        ex.start_stream()
        ex.send(chat_chunk(role="assistant", content=""), chat_chunk("Half"), chat_chunk(" an"))
        ex.send('data: {"error":{"message":"The server had an error while processing your request.",')
        ex.send('"type":"server_error","param":null,"code":null}}\n\n')
        ex.end_stream()

    server = upstream(script)
    received: list[Chunk] = []

    # When the provider streams
    with pytest.raises(ProviderError) as caught:
        for chunk in provider(server.base_url).stream(PROMPT, threading.Event()):
            received.append(chunk)

    # Then the tokens before it came through, and the error is final
    assert received == ["Half", " an"]
    assert caught.value.code == "provider_error"
    assert caught.value.retryable is False
    assert "The server had an error" in str(caught.value)


def test_a_stream_that_ends_without_finishing_is_an_error(upstream: Any, provider: Any) -> None:
    def script(ex: Exchange) -> None:
        ex.start_stream()
        ex.send(KEEP_ALIVE)
        ex.end_stream()

    server = upstream(script)

    with pytest.raises(ProviderError) as caught:
        run(provider(server.base_url), PROMPT)

    assert caught.value.code == "provider_unavailable"
    assert caught.value.retryable is True


# ---------------------------------------------------------------------------------------------------------------
# The event-stream parser on its own.


def test_events_parse_the_same_however_the_bytes_are_split() -> None:
    wire = (
        b": keep-alive\r\n\r\n"
        b'event: message_start\r\ndata: {"a":\r\ndata: 1}\r\n\r\n'
        b"data:no-space\n\n"
        b"id: 7\nretry: 100\ndata: caf\xc3\xa9\r\rdata: last"
    )
    expected = [("message_start", '{"a":\n1}'), ("message", "no-space"), ("message", "café"), ("message", "last")]

    whole = [(e.event, e.data) for e in iter_events([wire])]
    byte_by_byte = [(e.event, e.data) for e in iter_events(wire[i : i + 1] for i in range(len(wire)))]

    assert whole == expected
    assert byte_by_byte == expected


# ---------------------------------------------------------------------------------------------------------------
# Tool calls and reasoning, as OpenAI-compatible servers stream them (recorded wire formats).

_BASE = '"id":"chatcmpl-9","object":"chat.completion.chunk","created":1727000000,"model":"gpt-4o-2024-08-06"'
TOOL_CALL_STREAM = [
    f'data: {{{_BASE},"choices":[{{"index":0,"delta":{{"role":"assistant","content":null,"tool_calls":[{{"index":0,'
    '"id":"call_DdmO9pD3xa9XTPNJ32zg2hcA","type":"function","function":{"name":"get_weather","arguments":""}}],'
    '"refusal":null},"logprobs":null,"finish_reason":null}]}\n\n',
    f'data: {{{_BASE},"choices":[{{"index":0,"delta":{{"tool_calls":[{{"index":0,"function":{{"arguments":"{{\\"'
    'location"}}]},"logprobs":null,"finish_reason":null}]}\n\n',
    f'data: {{{_BASE},"choices":[{{"index":0,"delta":{{"tool_calls":[{{"index":0,"function":{{"arguments":"\\":'
    ' \\"Paris\\"}"}}]},"logprobs":null,"finish_reason":null}]}\n\n',
    f'data: {{{_BASE},"choices":[{{"index":0,"delta":{{}},"logprobs":null,"finish_reason":"tool_calls"}}]}}\n\n',
    "data: [DONE]\n\n",
]
# DeepSeek's reasoner (and vLLM, LM Studio): reasoning_content before the content.
REASONING_STREAM = [
    'data: {"id":"1","object":"chat.completion.chunk","created":1,"model":"deepseek-reasoner","choices":[{"index":0,'
    '"delta":{"role":"assistant","content":null,"reasoning_content":"Two plus two"},"finish_reason":null}]}\n\n',
    'data: {"id":"1","object":"chat.completion.chunk","created":1,"model":"deepseek-reasoner","choices":[{"index":0,'
    '"delta":{"content":"4","reasoning_content":null},"finish_reason":null}]}\n\n',
    'data: {"id":"1","object":"chat.completion.chunk","created":1,"model":"deepseek-reasoner","choices":[{"index":0,'
    '"delta":{"content":""},"finish_reason":"stop"}]}\n\n',
    "data: [DONE]\n\n",
]


def test_tool_call_deltas_come_as_their_own_chunks_and_the_finish_says_tool_calls(upstream: Any, provider: Any) -> None:
    server = upstream(streaming(*TOOL_CALL_STREAM))
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    request = GenerationRequest.model_validate(
        {"model": "gpt", "prompt": "Weather in Paris?", "tools": tools, "tool_choice": "auto"}
    )
    *chunks, finish = run(provider(server.base_url), request)
    assert chunks == [
        Delta("tool_call", {"index": 0, "id": "call_DdmO9pD3xa9XTPNJ32zg2hcA", "name": "get_weather", "arguments": ""}),
        Delta("tool_call", {"index": 0, "arguments": '{"location'}),
        Delta("tool_call", {"index": 0, "arguments": '": "Paris"}'}),
    ]
    assert finish.finish_reason == "tool_calls"
    sent = server.requests[0].body
    assert sent["tools"] == tools and sent["tool_choice"] == "auto"


def test_reasoning_content_comes_as_reasoning_deltas_before_the_answer(upstream: Any, provider: Any) -> None:
    server = upstream(streaming(*REASONING_STREAM))
    *chunks, finish = run(provider(server.base_url), PROMPT)
    assert chunks == [Delta("reasoning", {"content": "Two plus two"}), "4"]
    assert finish.finish_reason == "stop"


def test_tool_calls_and_results_are_sent_back_upstream_as_given(upstream: Any, provider: Any) -> None:
    server = upstream(streaming(*REASONING_STREAM))
    call = {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": '{"c": "Paris"}'}}
    messages = [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "c1", "content": "18 C"},
    ]
    run(provider(server.base_url), GenerationRequest.model_validate({"model": "gpt", "messages": messages}))
    assert server.requests[0].body["messages"] == messages


def test_an_oversized_upstream_event_or_line_is_a_provider_error_not_a_token() -> None:
    from bridge.errors import ProviderError
    from tasks.providers.sse import MAX_EVENT_BYTES

    half = b"data: " + b"x" * (MAX_EVENT_BYTES // 2 + 1) + b"\n"
    for wire in (half * 2 + b"\n", b"data: " + b"y" * (MAX_EVENT_BYTES + 1)):
        with pytest.raises(ProviderError, match="oversized"):
            list(iter_events(wire[i : i + 65536] for i in range(0, len(wire), 65536)))
    # Just under the cap is an event like any other
    assert [len(e.data) for e in iter_events([half + b"\n"])] == [MAX_EVENT_BYTES // 2 + 1]

"""AnthropicMessagesProvider against a real local HTTP server that writes the Messages API wire format byte for
byte: what is particular to that format (the transport both HTTP providers share: test_provider_transport.py)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from bridge.errors import ProviderError
from bridge.generation import GenerationRequest
from bridge.models import ModelSpec
from bridge.producer import Chunk, Delta, Finish
from tasks.providers.anthropic import AnthropicMessagesProvider
from tasks.providers.connections import new_client
from tests.support.scripted_upstream import (
    Exchange,
    Script,
    cut,
    no_watcher_left,
    run,
    split_finish,
)
from tests.support.wire_formats import (
    MESSAGE_STOP,
    PING,
    block_delta,
    block_start,
    block_stop,
    error_event,
    event,
    message_delta,
    message_start,
    text_delta,
)


def answer(*texts: str, stop_reason: str = "end_turn") -> Script:
    """A script streaming a whole answer of ``texts``."""

    def script(ex: Exchange) -> None:
        ex.start_stream()
        ex.send(message_start(), block_start(), *[text_delta(t) for t in texts], block_stop())
        ex.send(message_delta(stop_reason, len(texts)), MESSAGE_STOP)
        ex.end_stream()

    return script


@pytest.fixture
def provider(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., AnthropicMessagesProvider]]:
    """``create(base_url, **spec_fields)``: a provider on a client that the fixture closes."""
    monkeypatch.setenv("TEST_ANTHROPIC_KEY", "sk-ant-test-456")
    clients: list[httpx.Client] = []

    def create(base_url: str, **fields: Any) -> AnthropicMessagesProvider:
        spec = ModelSpec.model_validate(
            {"name": "claude", "provider": "anthropic", "base_url": base_url, "api_key_env": "TEST_ANTHROPIC_KEY"}
            | fields
        )
        clients.append(new_client())
        return AnthropicMessagesProvider(spec, client=clients[-1])

    yield create
    for client in clients:
        client.close()


PROMPT = GenerationRequest(model="claude", prompt="Say hello")


# ---------------------------------------------------------------------------------------------------------------
# Streams that succeed.


def test_tokens_concatenate_and_finish_and_usage_are_mapped(upstream: Any, provider: Any) -> None:
    # Given an upstream that sends a thinking block, a ping, text deltas split across network chunks, and usage in
    # message_start and message_delta
    hello = text_delta("Hello", 1)

    def script(ex: Exchange) -> None:
        ex.start_stream()
        ex.send(message_start(input_tokens=25))
        ex.send(block_start(0, "thinking"))
        ex.send(block_delta({"type": "thinking_delta", "thinking": "Hmm."}, 0))
        ex.send(block_delta({"type": "signature_delta", "signature": "c2ln"}, 0))
        ex.send(block_stop(0), block_start(1), PING)
        ex.send(*cut(hello, 10, 27, len(hello) - 1))
        ex.send(text_delta(", wor", 1) + text_delta("", 1) + text_delta("ld!", 1))
        ex.send(block_stop(1), message_delta("end_turn", 15), MESSAGE_STOP)
        ex.end_stream()

    server = upstream(script)

    # When the provider streams it
    *chunks, finish = run(provider(server.base_url), PROMPT)
    tokens = [chunk for chunk in chunks if isinstance(chunk, str)]

    # Then the thinking comes as a reasoning delta before the text, and the finish carries the mapped reason
    # and the usage
    assert chunks[0] == Delta("reasoning", {"content": "Hmm."})
    assert tokens == chunks[1:] == ["Hello", ", wor", "ld!"]
    assert "".join(tokens) == "Hello, world!"
    assert finish == Finish("stop", {"prompt_tokens": 25, "completion_tokens": 15})
    assert no_watcher_left()


@pytest.mark.parametrize(
    ("stop_reason", "finish_reason"),
    [("end_turn", "stop"), ("max_tokens", "length"), ("stop_sequence", "stop"), ("tool_use", "tool_calls")],
)
def test_stop_reasons_are_mapped(upstream: Any, provider: Any, stop_reason: str, finish_reason: str) -> None:
    server = upstream(answer("a", "b", stop_reason=stop_reason))

    tokens, finish = split_finish(run(provider(server.base_url), PROMPT))

    assert tokens == ["a", "b"]
    assert finish.finish_reason == finish_reason


def test_cached_prompt_tokens_count_towards_the_prompt(upstream: Any, provider: Any) -> None:
    def script(ex: Exchange) -> None:
        ex.start_stream()
        ex.send(message_start(3, cache_creation_input_tokens=100, cache_read_input_tokens=2000))
        ex.send(block_start(), text_delta("ok"), block_stop(), message_delta("end_turn", 2), MESSAGE_STOP)
        ex.end_stream()

    server = upstream(script)

    _, finish = split_finish(run(provider(server.base_url), PROMPT))

    assert finish.usage == {"prompt_tokens": 2103, "completion_tokens": 2}


def test_request_body_and_headers_follow_the_request_and_the_spec(upstream: Any, provider: Any) -> None:
    # Given a request whose system messages are spread out, and a spec with an upstream name and a beta header
    server = upstream(answer("ok"))
    request = GenerationRequest.model_validate(
        {
            "model": "claude",
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello."},
                {"role": "system", "content": "Answer in French."},
                {"role": "user", "content": "Again"},
            ],
            "max_tokens": 50,
            "temperature": 0.3,
            "stop": ["END", "STOP"],
        }
    )
    claude = provider(server.base_url, model="claude-sonnet-4-20250514", headers={"anthropic-beta": "b-1"})

    # When it streams
    run(claude, request)

    # Then the system text is hoisted, the rest maps field for field, and the key comes from the environment
    sent = server.requests[0]
    assert sent.path == "/v1/messages"
    assert sent.body == {
        "model": "claude-sonnet-4-20250514",
        "max_tokens": 50,
        "system": "Be brief.\n\nAnswer in French.",
        "messages": [
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello."},
            {"role": "user", "content": "Again"},
        ],
        "temperature": 0.3,
        "stop_sequences": ["END", "STOP"],
        "stream": True,
    }
    assert sent.headers["x-api-key"] == "sk-ant-test-456"
    assert sent.headers["anthropic-version"] == "2023-06-01"
    assert sent.headers["anthropic-beta"] == "b-1"
    assert "authorization" not in sent.headers


@pytest.mark.parametrize(
    ("request_max", "spec_max", "sent_max"), [(50, 4096, 50), (None, 4096, 4096), (None, None, 1024)]
)
def test_max_tokens_is_always_sent(
    upstream: Any, provider: Any, request_max: int | None, spec_max: int | None, sent_max: int
) -> None:
    server = upstream(answer("ok"))
    request = GenerationRequest(model="claude", prompt="Say hello", max_tokens=request_max)

    run(provider(server.base_url, max_tokens=spec_max), request)

    sent = server.requests[0].body
    assert sent["max_tokens"] == sent_max
    assert sent["messages"] == [{"role": "user", "content": "Say hello"}]
    assert "system" not in sent and "temperature" not in sent and "stop_sequences" not in sent


def test_a_tool_message_is_rejected_before_anything_is_sent(upstream: Any, provider: Any) -> None:
    server = upstream(answer("ok"))
    request = GenerationRequest.model_validate(
        {"model": "claude", "messages": [{"role": "user", "content": "Hi"}, {"role": "tool", "content": "42"}]}
    )

    with pytest.raises(ProviderError) as caught:
        run(provider(server.base_url), request)

    assert caught.value.code == "provider_rejected"
    assert server.requests == []


# ---------------------------------------------------------------------------------------------------------------
# Failures.


@pytest.mark.parametrize(
    ("kind", "code", "retryable"),
    [
        ("overloaded_error", "provider_unavailable", True),
        ("api_error", "provider_unavailable", True),
        ("rate_limit_error", "provider_unavailable", True),
        ("invalid_request_error", "provider_rejected", False),
    ],
)
def test_an_error_event_before_the_first_token_is_judged_by_its_type(
    upstream: Any, provider: Any, kind: str, code: str, retryable: bool
) -> None:
    # Given an upstream that answers 200, starts the message, then sends an error event
    def script(ex: Exchange) -> None:
        ex.start_stream()
        ex.send(message_start(), PING, error_event(kind, "Something went wrong"))
        ex.end_stream()

    server = upstream(script)

    # When the provider streams
    with pytest.raises(ProviderError) as caught:
        run(provider(server.base_url), PROMPT)

    # Then transient types are worth a retry and the others are not
    assert caught.value.code == code
    assert caught.value.retryable is retryable
    assert "Something went wrong" in str(caught.value)


def test_an_error_event_after_tokens_is_a_final_provider_error(upstream: Any, provider: Any) -> None:
    # Given an upstream that is overloaded mid-answer
    def script(ex: Exchange) -> None:
        ex.start_stream()
        ex.send(message_start(), block_start(), text_delta("Half"), text_delta(" an"))
        ex.send(*cut(error_event("overloaded_error", "Overloaded"), 20))
        ex.end_stream()

    server = upstream(script)
    received: list[Chunk] = []

    # When the provider streams
    with pytest.raises(ProviderError) as caught:
        for chunk in provider(server.base_url).stream(PROMPT, threading.Event()):
            received.append(chunk)

    # Then the tokens before it came through, and the error is final even though its type is transient
    assert received == ["Half", " an"]
    assert caught.value.code == "provider_error"
    assert caught.value.retryable is False
    assert "Overloaded" in str(caught.value)


def test_a_stream_that_ends_before_message_stop_after_tokens_is_a_final_error(upstream: Any, provider: Any) -> None:
    def script(ex: Exchange) -> None:
        ex.start_stream()
        ex.send(message_start(), block_start(), text_delta("Cut"))
        ex.end_stream()

    server = upstream(script)

    with pytest.raises(ProviderError) as caught:
        run(provider(server.base_url), PROMPT)

    assert caught.value.code == "provider_error"


# ---------------------------------------------------------------------------------------------------------------
# Tool calls, as the Messages API streams them (recorded wire format).

TOOL_USE_STREAM = [
    event(
        "message_start",
        {
            "type": "message_start",
            "message": {
                "id": "msg_01",
                "type": "message",
                "role": "assistant",
                "content": [],
                "model": "claude",
                "stop_reason": None,
                "usage": {"input_tokens": 472, "output_tokens": 2},
            },
        },
    ),
    event(
        "content_block_start",
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
    ),
    block_delta({"type": "text_delta", "text": "Let me check."}, 0),
    block_stop(0),
    event(
        "content_block_start",
        {
            "type": "content_block_start",
            "index": 1,
            "content_block": {
                "type": "tool_use",
                "id": "toolu_01T1x1fJ34qAmk2tNTrN7Up6",
                "name": "get_weather",
                "input": {},
            },
        },
    ),
    block_delta({"type": "input_json_delta", "partial_json": ""}, 1),
    block_delta({"type": "input_json_delta", "partial_json": '{"location":'}, 1),
    block_delta({"type": "input_json_delta", "partial_json": ' "Paris"}'}, 1),
    block_stop(1),
    event(
        "message_delta",
        {
            "type": "message_delta",
            "delta": {"stop_reason": "tool_use", "stop_sequence": None},
            "usage": {"output_tokens": 89},
        },
    ),
    MESSAGE_STOP,
]


def test_a_tool_use_block_streams_as_tool_call_deltas_and_ends_with_tool_calls(upstream: Any, provider: Any) -> None:
    def script(ex: Exchange) -> None:
        ex.start_stream()
        ex.send(*TOOL_USE_STREAM, pause_s=0)
        ex.end_stream()

    server = upstream(script)
    request = GenerationRequest.model_validate(
        {
            "model": "claude",
            "prompt": "Weather in Paris?",
            "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}],
            "tool_choice": "required",
        }
    )
    *chunks, finish = run(provider(server.base_url), request)
    assert chunks == [
        "Let me check.",
        Delta(
            "tool_call", {"index": 0, "id": "toolu_01T1x1fJ34qAmk2tNTrN7Up6", "name": "get_weather", "arguments": ""}
        ),
        Delta("tool_call", {"index": 0, "arguments": '{"location":'}),
        Delta("tool_call", {"index": 0, "arguments": ' "Paris"}'}),
    ]
    assert finish == Finish("tool_calls", {"prompt_tokens": 472, "completion_tokens": 89})
    sent = server.requests[0].body
    assert sent["tools"] == [{"name": "get_weather", "input_schema": {"type": "object"}}]
    assert sent["tool_choice"] == {"type": "any"}


def test_tool_calls_and_results_go_back_as_tool_use_and_tool_result_blocks() -> None:
    spec = ModelSpec(name="claude", provider="anthropic", base_url="http://127.0.0.1:9/v1")
    request = GenerationRequest.model_validate(
        {
            "model": "claude",
            "messages": [
                {"role": "user", "content": "Weather in Paris and Rome?"},
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": "t1",
                            "type": "function",
                            "function": {"name": "get_weather", "arguments": '{"c": "Paris"}'},
                        },
                        {
                            "id": "t2",
                            "type": "function",
                            "function": {"name": "get_weather", "arguments": '{"c": "Rome"}'},
                        },
                    ],
                },
                {"role": "tool", "tool_call_id": "t1", "content": "18 C"},
                {"role": "tool", "tool_call_id": "t2", "content": "24 C"},
            ],
        }
    )
    body = AnthropicMessagesProvider(spec).body(request)
    assert body["messages"] == [
        {"role": "user", "content": "Weather in Paris and Rome?"},
        {
            "role": "assistant",
            "content": [
                {"type": "tool_use", "id": "t1", "name": "get_weather", "input": {"c": "Paris"}},
                {"type": "tool_use", "id": "t2", "name": "get_weather", "input": {"c": "Rome"}},
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "t1", "content": "18 C"},
                {"type": "tool_result", "tool_use_id": "t2", "content": "24 C"},
            ],
        },
    ]

"""The streaming wire formats of the model APIs, written as the upstreams write them: OpenAI Chat Completions
and Anthropic Messages. Frame builders for the provider tests, and a ``WireFormat`` per API for the transport
tests, which run once on each."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bridge.models import ModelSpec
from tasks.providers.anthropic import AnthropicMessagesProvider
from tasks.providers.openai import OpenAIChatProvider
from tasks.providers.upstream import UpstreamProvider

# -- OpenAI Chat Completions ------------------------------------------------------------------------------------


def chat_chunk(content: str | None = None, *, role: str | None = None, finish_reason: str | None = None) -> str:
    """One ``data:`` event as OpenAI writes it (compact JSON, ``usage: null`` when usage is included)."""
    delta: dict[str, Any] = {}
    if role is not None:
        delta["role"] = role
    if content is not None:
        delta["content"] = content
    choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
    body = {
        "id": "chatcmpl-9x",
        "object": "chat.completion.chunk",
        "created": 1727000000,
        "model": "gpt-4o-mini-2024-07-18",
        "system_fingerprint": "fp_1",
        "choices": [choice],
        "usage": None,
    }
    return "data: " + json.dumps(body, separators=(",", ":")) + "\n\n"


def usage_chunk(prompt_tokens: int, completion_tokens: int) -> str:
    usage = {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }
    body = {
        "id": "chatcmpl-9x",
        "object": "chat.completion.chunk",
        "created": 1727000000,
        "choices": [],
        "usage": usage,
    }
    return "data: " + json.dumps(body, separators=(",", ":")) + "\n\n"


DONE = "data: [DONE]\n\n"
KEEP_ALIVE = ": keep-alive\n\n"


# -- Anthropic Messages -----------------------------------------------------------------------------------------


def event(name: str, data: dict[str, Any]) -> str:
    """One event as Anthropic writes it: ``event:`` then ``data:`` (compact JSON), then a blank line."""
    return f"event: {name}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


def message_start(input_tokens: int = 25, **usage: int) -> str:
    message: dict[str, Any] = {
        "id": "msg_01",
        "type": "message",
        "role": "assistant",
        "content": [],
        "model": "claude-sonnet-4-20250514",
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {"input_tokens": input_tokens, "output_tokens": 1, **usage},
    }
    return event("message_start", {"type": "message_start", "message": message})


def block_start(index: int = 0, kind: str = "text") -> str:
    block: dict[str, Any] = {"type": kind, "text": ""} if kind == "text" else {"type": kind, "thinking": ""}
    return event("content_block_start", {"type": "content_block_start", "index": index, "content_block": block})


def tool_use_start(index: int, name: str, *, tool_id: str = "toolu_01A09q90qw90lq917835lq9", **whole: Any) -> str:
    """A ``tool_use`` block's start: its input comes in ``input_json_delta`` pieces, unless given whole here."""
    block = {"type": "tool_use", "id": tool_id, "name": name, "input": whole}
    return event("content_block_start", {"type": "content_block_start", "index": index, "content_block": block})


def json_delta(piece: str, index: int) -> str:
    return block_delta({"type": "input_json_delta", "partial_json": piece}, index)


def block_delta(delta: dict[str, str], index: int = 0) -> str:
    return event("content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta})


def text_delta(text: str, index: int = 0) -> str:
    return block_delta({"type": "text_delta", "text": text}, index)


def block_stop(index: int = 0) -> str:
    return event("content_block_stop", {"type": "content_block_stop", "index": index})


def message_delta(stop_reason: str = "end_turn", output_tokens: int = 15) -> str:
    delta = {"stop_reason": stop_reason, "stop_sequence": None}
    return event("message_delta", {"type": "message_delta", "delta": delta, "usage": {"output_tokens": output_tokens}})


MESSAGE_STOP = event("message_stop", {"type": "message_stop"})
PING = event("ping", {"type": "ping"})


def error_event(kind: str, message: str) -> str:
    return event("error", {"type": "error", "error": {"type": kind, "message": message}})


# -- Either, for the transport tests ----------------------------------------------------------------------------


@dataclass(frozen=True)
class WireFormat:
    """What a transport test needs of one API: its provider, its key, and a whole answer in its frames."""

    name: str
    provider: type[UpstreamProvider]
    key_env: str
    key: str
    path: str
    opening: tuple[str, ...]
    token: Callable[[str], str]
    closing: tuple[str, ...]
    error_body: Callable[[str], str]

    def spec(self, base_url: str, **fields: Any) -> ModelSpec:
        return ModelSpec.model_validate(
            {"name": self.name, "provider": self.name, "base_url": base_url, "api_key_env": self.key_env} | fields
        )


OPENAI = WireFormat(
    name="openai",
    provider=OpenAIChatProvider,
    key_env="TEST_OPENAI_KEY",
    key="sk-test-123",
    path="/v1/chat/completions",
    opening=(chat_chunk(role="assistant", content=""),),
    token=chat_chunk,
    closing=(chat_chunk(finish_reason="stop"), DONE),
    error_body=lambda message: json.dumps({"error": {"message": message, "type": "server_error", "code": None}}),
)

ANTHROPIC = WireFormat(
    name="anthropic",
    provider=AnthropicMessagesProvider,
    key_env="TEST_ANTHROPIC_KEY",
    key="sk-ant-test-456",
    path="/v1/messages",
    opening=(message_start(), block_start()),
    token=text_delta,
    closing=(block_stop(), message_delta(), MESSAGE_STOP),
    error_body=lambda message: json.dumps({"type": "error", "error": {"type": "api_error", "message": message}}),
)

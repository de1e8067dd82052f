"""Anthropic Messages API streaming: ``POST {base_url}/messages`` with ``stream: true``.

The request is translated into the Messages API's shape (docs/models.md#wire-formats): system messages into
``system``, tool calls and results into blocks, images into image blocks, ``user`` into ``metadata.user_id``,
``parallel_tool_calls: false`` into ``disable_parallel_tool_use``. A ``response_format`` of JSON becomes a forced
tool whose input schema is the answer's: the tool's input streams back as the answer's text.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import orjson

from bridge.content import ImagePart, TextPart, data_uri
from bridge.errors import ProviderError
from bridge.events import EventType
from bridge.generation import GenerationRequest, Message, NamedToolChoice, ResponseFormat, Tool
from bridge.producer import Chunk, Delta, Finish
from tasks.providers.sse import ServerSentEvent
from tasks.providers.upstream import Upstream, UpstreamProvider, error_message, relay

ANTHROPIC_VERSION = "2023-06-01"
# Anthropic requires max_tokens; used when neither the request nor the model gives one.
DEFAULT_MAX_TOKENS = 1024

_FINISH_REASONS = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length", "tool_use": "tool_calls"}
# Error types worth another try before the first token; the others blame the request.
_TRANSIENT_ERRORS = frozenset({"overloaded_error", "api_error", "rate_limit_error", "timeout_error"})


class _MessagesDecoder:
    def __init__(self, upstream: Upstream, *, json_answer: bool = False) -> None:
        self.upstream = upstream
        self.ended = False
        self.stop_reason: str | None = None
        self.usage: dict[str, int] = {}
        # Content block index -> tool call index (the n-th tool_use block of the message).
        self.tool_calls: dict[int, int] = {}
        # A JSON answer asked for with response_format: the forced tool's input is the answer's text.
        self.json_answer = json_answer
        self.json_blocks: set[int] = set()

    def feed(self, event: ServerSentEvent) -> Iterator[str | Delta]:
        data = self.upstream.event_object(event, f"{event.event} event")
        kind = data.get("type") or event.event
        if kind == "content_block_delta":
            yield from self._block_delta(int(data.get("index") or 0), data.get("delta") or {})
        elif kind == "content_block_start":
            yield from self._block_start(int(data.get("index") or 0), data.get("content_block") or {})
        elif kind == "message_start":
            self._count((data.get("message") or {}).get("usage"))
        elif kind == "message_delta":
            self.stop_reason = (data.get("delta") or {}).get("stop_reason") or self.stop_reason
            self._count(data.get("usage"))
        elif kind == "message_stop":
            self.ended = True
        elif kind == "error":
            raise self._error(data.get("error"))
        # ping, content_block_stop and event types added later carry no text.

    def _block_delta(self, block: int, delta: dict[str, Any]) -> Iterator[str | Delta]:
        delta_type = delta.get("type")
        if delta_type == "text_delta" and isinstance(text := delta.get("text"), str) and text:
            yield text
        elif delta_type == "thinking_delta" and isinstance(thinking := delta.get("thinking"), str) and thinking:
            yield Delta(EventType.REASONING.value, {"content": thinking})
        elif delta_type == "input_json_delta" and isinstance(piece := delta.get("partial_json"), str) and piece:
            index = self.tool_calls.get(block)
            if block in self.json_blocks:
                yield piece
            elif index is not None:
                yield Delta(EventType.TOOL_CALL.value, {"index": index, "arguments": piece})

    def _block_start(self, block: int, content: dict[str, Any]) -> Iterator[str | Delta]:
        block_type = content.get("type")
        if block_type == "text" and isinstance(text := content.get("text"), str) and text:
            yield text
        elif block_type == "thinking" and isinstance(thinking := content.get("thinking"), str) and thinking:
            yield Delta(EventType.REASONING.value, {"content": thinking})
        elif block_type == "tool_use" and self.json_answer:
            self.json_blocks.add(block)
            if whole := content.get("input"):  # otherwise it streams as input_json_delta
                yield orjson.dumps(whole).decode()
        elif block_type == "tool_use":
            index = self.tool_calls[block] = len(self.tool_calls)
            call = {"index": index, "id": str(content.get("id", "")), "name": str(content.get("name", ""))}
            # The input streams as input_json_delta; a block that carries it whole has no deltas.
            whole = content.get("input")
            call["arguments"] = orjson.dumps(whole).decode() if whole else ""
            yield Delta(EventType.TOOL_CALL.value, call)

    def finish(self) -> Finish:
        if not self.ended and self.stop_reason is None:
            raise self.upstream.error("the stream ended before the answer did", retryable=True)
        reason = self.stop_reason or "end_turn"
        if self.json_answer and reason == "tool_use":
            reason = "end_turn"  # the forced tool's call is the answer, whole
        return Finish(_FINISH_REASONS.get(reason, reason), self._usage())

    def _count(self, usage: Any) -> None:
        if not isinstance(usage, dict):
            return
        for name in ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens", "output_tokens"):
            if isinstance(value := usage.get(name), int):
                self.usage[name] = value

    def _usage(self) -> dict[str, int]:
        usage: dict[str, int] = {}
        prompt = [self.usage[name] for name in self.usage if name.endswith("input_tokens")]
        if prompt:
            # input_tokens leaves out what the prompt cache wrote or read; the prompt is all of it.
            usage["prompt_tokens"] = sum(prompt)
        if "output_tokens" in self.usage:
            usage["completion_tokens"] = self.usage["output_tokens"]
        return usage

    def _error(self, error: Any) -> ProviderError:
        kind = error.get("type") if isinstance(error, dict) else None
        message = f"{kind or 'error'} event: {error_message(error)}"
        return self.upstream.error(message, retryable=kind in _TRANSIENT_ERRORS)


class AnthropicMessagesProvider(UpstreamProvider):
    """Streams the Anthropic Messages API (``base_url`` like ``https://api.anthropic.com/v1``)."""

    endpoint = "/messages"

    def stream(self, request: GenerationRequest, stop: threading.Event) -> Iterator[Chunk]:
        self.refuse_unsupported(request)
        upstream = Upstream.of(self.spec)
        body = self.body(request)
        headers = {"Accept": "text/event-stream", "anthropic-version": ANTHROPIC_VERSION}
        if upstream.secret:
            headers["x-api-key"] = upstream.secret
        http_request = self.post(body, headers)
        decoder = _MessagesDecoder(upstream, json_answer=_answer_tool(request.response_format) is not None)
        yield from relay(self._client, http_request, stop, decoder, upstream)

    def body(self, request: GenerationRequest) -> dict[str, Any]:
        """The upstream request body: system messages go to the top-level ``system``; tool calls and results
        become ``tool_use`` and ``tool_result`` blocks, and consecutive messages of one role are merged."""
        system, messages = self._messages(request)
        body: dict[str, Any] = {
            "model": self.spec.upstream_model,
            "max_tokens": request.max_tokens or self.spec.max_tokens or DEFAULT_MAX_TOKENS,
            "messages": messages,
            "stream": True,
        }
        if system:
            body["system"] = "\n\n".join(system)
        for name, value in (("temperature", request.temperature), ("top_p", request.top_p), ("top_k", request.top_k)):
            if value is not None:
                body[name] = value
        if request.stop:
            body["stop_sequences"] = request.stop
        if request.user is not None:
            body["metadata"] = {"user_id": request.user}
        return body | _tools(request)

    def _messages(self, request: GenerationRequest) -> tuple[list[str], list[dict[str, Any]]]:
        """The system texts, and the other messages as the Messages API takes them."""
        system: list[str] = []
        messages: list[dict[str, Any]] = []
        if request.messages is None:
            messages.append({"role": "user", "content": request.prompt or ""})
        for message in request.messages or []:
            if message.role == "system":
                system.append(message.text)
                continue
            if message.role == "tool" and message.tool_call_id is None:
                # A tool result needs the tool_use_id of the call it answers, which a plain message lacks.
                raise Upstream.of(self.spec).error(
                    "the Messages API takes no 'tool' messages without tool ids", retryable=False
                )
            role, blocks = _blocks(message)
            if messages and messages[-1]["role"] == role:
                previous = messages[-1]["content"]
                if isinstance(previous, str):
                    previous = [{"type": "text", "text": previous}]
                messages[-1]["content"] = previous + blocks
            elif len(blocks) == 1 and blocks[0]["type"] == "text":
                messages.append({"role": role, "content": blocks[0]["text"]})
            else:
                messages.append({"role": role, "content": blocks})
        return system, messages


def _tools(request: GenerationRequest) -> dict[str, Any]:
    """``tools`` and ``tool_choice``: the request's, or the forced tool of a JSON answer."""
    answer = _answer_tool(request.response_format)
    if answer is not None:
        return {"tools": [answer], "tool_choice": {"type": "tool", "name": answer["name"]}}
    fields: dict[str, Any] = {}
    if request.tools:
        fields["tools"] = [_tool(tool) for tool in request.tools]
    choice = _tool_choice(request.tool_choice) if request.tool_choice is not None else None
    if request.parallel_tool_calls is False and request.tools:
        choice = choice or {"type": "auto"}
        if choice["type"] != "none":  # a model that calls no tool calls none at once
            choice["disable_parallel_tool_use"] = True
    if choice is not None:
        fields["tool_choice"] = choice
    return fields


def _answer_tool(response_format: ResponseFormat | None) -> dict[str, Any] | None:
    """The tool a JSON answer is forced through: its input schema is the answer's (any object for json_object)."""
    if response_format is None or response_format.type == "text":
        return None
    json_schema = response_format.json_schema
    if json_schema is None:
        return {"name": "json_object", "description": "Answer with a JSON object.", "input_schema": {"type": "object"}}
    return {
        "name": json_schema.name,
        "description": json_schema.description or "Answer with JSON that follows this schema.",
        "input_schema": json_schema.schema_ or {"type": "object"},
    }


def _tool(tool: Tool) -> dict[str, Any]:
    return {
        "name": tool.function.name,
        **({"description": tool.function.description} if tool.function.description else {}),
        "input_schema": tool.function.parameters or {"type": "object", "properties": {}},
    }


def _tool_choice(choice: str | NamedToolChoice) -> dict[str, Any]:
    if isinstance(choice, str):
        return {"auto": {"type": "auto"}, "required": {"type": "any"}, "none": {"type": "none"}}[choice]
    return {"type": "tool", "name": choice.function.get("name", "")}


def _blocks(message: Message) -> tuple[str, list[dict[str, Any]]]:
    """A message as the Messages API's content blocks, with the role it takes there."""
    if message.role == "tool":
        content = message.content if isinstance(message.content, list) else None
        result: dict[str, Any] = {"type": "tool_result", "tool_use_id": message.tool_call_id}
        result["content"] = _content_blocks(content) if content else message.text
        return "user", [result]
    blocks: list[dict[str, Any]] = []
    if isinstance(message.content, list):
        blocks += _content_blocks(message.content)
    elif message.content:
        blocks.append({"type": "text", "text": message.content})
    for call in message.tool_calls or []:
        try:
            arguments = orjson.loads(call.function.arguments or "{}")
        except orjson.JSONDecodeError:
            arguments = {}
        blocks.append({"type": "tool_use", "id": call.id, "name": call.function.name, "input": arguments})
    return message.role, blocks or [{"type": "text", "text": ""}]


def _content_blocks(parts: list[Any]) -> list[dict[str, Any]]:
    """Content parts as blocks: text, and images by URL or inline (base64). An empty text part is no block (the API
    refuses empty text blocks); an image's ``detail`` has no equivalent (a model refuses one but ``auto``)."""
    blocks: list[dict[str, Any]] = []
    for part in parts:
        if isinstance(part, TextPart) and part.text:
            blocks.append({"type": "text", "text": part.text})
        elif isinstance(part, ImagePart):
            inline = data_uri(part.image_url.url)
            source = (
                {"type": "url", "url": part.image_url.url}
                if inline is None
                else {"type": "base64", "media_type": inline.media_type, "data": inline.data}
            )
            blocks.append({"type": "image", "source": source})
    return blocks

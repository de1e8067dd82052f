"""OpenAI-compatible Chat Completions.

``OpenAIChatProvider`` speaks ``POST {base_url}/chat/completions`` with ``stream: true``: OpenAI, vLLM, Ollama,
llama.cpp server, LM Studio, TGI and OpenRouter all answer it with server-sent events.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

from bridge.errors import ProviderError
from bridge.events import EventType
from bridge.generation import GenerationRequest
from bridge.producer import Chunk, Delta, Finish
from tasks.providers.sse import ServerSentEvent
from tasks.providers.upstream import Upstream, UpstreamProvider, error_message, relay

# Request fields sent under the same name with the same value (top_k is Anthropic's: refused for these models).
_AS_THEY_ARE = ("top_p", "seed", "presence_penalty", "frequency_penalty", "logit_bias", "parallel_tool_calls", "user")


def chat_messages(request: GenerationRequest) -> list[dict[str, Any]]:
    """The request's messages in the Chat Completions shape (content parts as they came); a prompt is one user
    message."""
    if request.messages is None:
        return [{"role": "user", "content": request.prompt or ""}]
    return [message.model_dump(exclude_none=True) for message in request.messages]


class _ChatCompletionDecoder:
    def __init__(self, upstream: Upstream) -> None:
        self.upstream = upstream
        self.ended = False
        self.finish_reason: str | None = None
        self.usage: dict[str, int] = {}

    def feed(self, event: ServerSentEvent) -> Iterator[str | Delta]:
        if event.data.strip() == "[DONE]":
            self.ended = True
            return
        chunk = self.upstream.event_object(event, "event data")
        if chunk.get("error") or event.event == "error":
            raise self._stream_error(chunk.get("error") or chunk)
        usage = chunk.get("usage")
        if isinstance(usage, dict):
            self.usage = {k: v for k in ("prompt_tokens", "completion_tokens") if isinstance(v := usage.get(k), int)}
        for choice in chunk.get("choices") or []:
            if isinstance(choice, dict) and choice.get("index", 0) == 0:
                yield from self._choice(choice)

    def _choice(self, choice: dict[str, Any]) -> Iterator[str | Delta]:
        """The deltas of the first choice (the only one a generation asks for), and its finish reason."""
        delta = choice.get("delta") or {}
        # Reasoning deltas: ``reasoning_content`` (DeepSeek, vLLM, LM Studio) or ``reasoning`` (OpenRouter).
        reasoning = delta.get("reasoning_content") or delta.get("reasoning")
        if isinstance(reasoning, str) and reasoning:
            yield Delta(EventType.REASONING.value, {"content": reasoning})
        content = delta.get("content")
        if isinstance(content, str) and content:
            yield content
        for call in delta.get("tool_calls") or []:
            if isinstance(call, dict):
                yield _tool_call_delta(call)
        if choice.get("finish_reason"):
            self.finish_reason = str(choice["finish_reason"])

    def finish(self) -> Finish:
        if not self.ended and self.finish_reason is None:
            raise self.upstream.error("the stream ended before the answer did", retryable=True)
        return Finish(self.finish_reason or "stop", self.usage)

    def _stream_error(self, error: Any) -> ProviderError:
        """An error event: retried unless it blames the request (a 4xx code other than 429, or a 4xx-type name)."""
        details = error if isinstance(error, dict) else {}
        code = str(details.get("code") or details.get("status") or "")
        kind = str(details.get("type") or "")
        blames_request = (code.startswith("4") and code != "429") or kind in (
            "invalid_request_error",
            "BadRequestError",
            "authentication_error",
            "permission_error",
            "not_found_error",
        )
        return self.upstream.error(f"error event: {error_message(error)}", retryable=not blames_request)


def _tool_call_delta(call: dict[str, Any]) -> Delta:
    """A ``tool_call`` event from one of OpenAI's ``delta.tool_calls`` entries."""
    function = call.get("function") or {}
    data: dict[str, Any] = {"index": int(call.get("index") or 0)}
    if isinstance(call.get("id"), str):
        data["id"] = call["id"]
    if isinstance(function.get("name"), str):
        data["name"] = function["name"]
    arguments = function.get("arguments")
    data["arguments"] = arguments if isinstance(arguments, str) else ""
    return Delta(EventType.TOOL_CALL.value, data)


class OpenAIChatProvider(UpstreamProvider):
    """Streams an OpenAI-compatible Chat Completions endpoint."""

    endpoint = "/chat/completions"

    def stream(self, request: GenerationRequest, stop: threading.Event) -> Iterator[Chunk]:
        self.refuse_unsupported(request)
        upstream = Upstream.of(self.spec)
        headers = {"Accept": "text/event-stream"}
        if upstream.secret:
            headers["Authorization"] = f"Bearer {upstream.secret}"
        http_request = self.post(self.body(request), headers)
        yield from relay(self._client, http_request, stop, _ChatCompletionDecoder(upstream), upstream)

    def body(self, request: GenerationRequest) -> dict[str, Any]:
        """The upstream request body: the request's fields as they came (docs/models.md#wire-formats)."""
        body: dict[str, Any] = {
            "model": self.spec.upstream_model,
            "messages": chat_messages(request),
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        max_tokens = request.max_tokens if request.max_tokens is not None else self.spec.max_tokens
        if max_tokens is not None:
            body["max_tokens"] = max_tokens
        if request.temperature is not None:
            body["temperature"] = request.temperature
        if request.stop:
            body["stop"] = request.stop
        if request.tools:
            body["tools"] = [tool.model_dump(exclude_none=True) for tool in request.tools]
        if request.tool_choice is not None:
            choice = request.tool_choice
            body["tool_choice"] = choice if isinstance(choice, str) else choice.model_dump()
        for name in _AS_THEY_ARE:
            if (value := getattr(request, name)) is not None:
                body[name] = value
        if request.response_format is not None:
            body["response_format"] = request.response_format.model_dump(exclude_none=True)
        return body

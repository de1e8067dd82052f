"""Anthropic Messages API streaming: ``POST {base_url}/messages`` with ``stream: true``."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import orjson

from bridge.errors import ProviderError
from bridge.generation import GenerationRequest
from bridge.producer import Chunk, Finish
from tasks.providers.openai import ServerSentEvent, Upstream, UpstreamProvider, error_message, relay

ANTHROPIC_VERSION = "2023-06-01"
# Anthropic requires max_tokens; used when neither the request nor the model gives one.
DEFAULT_MAX_TOKENS = 1024

_FINISH_REASONS = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length"}
# Error types worth another try before the first token; the others blame the request.
_TRANSIENT_ERRORS = frozenset({"overloaded_error", "api_error", "rate_limit_error", "timeout_error"})


class _MessagesDecoder:
    def __init__(self, upstream: Upstream) -> None:
        self.upstream = upstream
        self.ended = False
        self.stop_reason: str | None = None
        self.usage: dict[str, int] = {}

    def feed(self, event: ServerSentEvent) -> Iterator[str]:
        try:
            data = orjson.loads(event.data)
        except orjson.JSONDecodeError:
            raise self.upstream.error(f"malformed {event.event} event: {event.data[:200]!r}", retryable=False) from None
        if not isinstance(data, dict):
            raise self.upstream.error(f"unexpected {event.event} event: {event.data[:200]!r}", retryable=False)
        kind = data.get("type") or event.event
        if kind == "content_block_delta":
            delta = data.get("delta") or {}
            if delta.get("type") == "text_delta" and isinstance(text := delta.get("text"), str) and text:
                yield text
        elif kind == "content_block_start":
            block = data.get("content_block") or {}
            if block.get("type") == "text" and isinstance(text := block.get("text"), str) and text:
                yield text
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

    def finish(self) -> Finish:
        if not self.ended and self.stop_reason is None:
            raise self.upstream.error("the stream ended before the answer did", retryable=True)
        reason = self.stop_reason or "end_turn"
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
    """Streams the Anthropic Messages API (``base_url`` like ``https://api.anthropic.com/v1``).

    ``client`` is for tests and for sharing a pool (see ``OpenAIChatProvider``); the provider closes only a client
    it made.
    """

    endpoint = "/messages"

    def stream(self, request: GenerationRequest, stop: threading.Event) -> Iterator[Chunk]:
        upstream = Upstream.of(self.spec)
        body = self.body(request)
        headers = {"Accept": "text/event-stream", "anthropic-version": ANTHROPIC_VERSION}
        if upstream.secret:
            headers["x-api-key"] = upstream.secret
        headers.update(self.spec.headers)
        http_request = self._client.build_request("POST", self._url, json=body, headers=headers)
        yield from relay(self._client, http_request, stop, _MessagesDecoder(upstream), upstream)

    def body(self, request: GenerationRequest) -> dict[str, Any]:
        """The upstream request body: system messages go to the top-level ``system``."""
        system: list[str] = []
        messages: list[dict[str, str]] = []
        if request.messages is None:
            messages.append({"role": "user", "content": request.prompt or ""})
        for message in request.messages or []:
            if message.role == "system":
                system.append(message.content)
            elif message.role in ("user", "assistant"):
                messages.append({"role": message.role, "content": message.content})
            else:
                # A tool result needs the tool_use_id of the call it answers, which a plain message lacks.
                raise Upstream.of(self.spec).error(
                    f"the Messages API takes no {message.role!r} messages without tool ids", retryable=False
                )
        body: dict[str, Any] = {
            "model": self.spec.upstream_model,
            "max_tokens": request.max_tokens or self.spec.max_tokens or DEFAULT_MAX_TOKENS,
            "messages": messages,
            "stream": True,
        }
        if system:
            body["system"] = "\n\n".join(system)
        if request.temperature is not None:
            body["temperature"] = request.temperature
        if request.stop:
            body["stop_sequences"] = request.stop
        return body

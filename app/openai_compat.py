"""``POST /v1/chat/completions``: the OpenAI Chat Completions protocol, backed by a tokenbridge generation.

Any OpenAI client library streams through the bridge unchanged. The ``x-tokenbridge-generation-id``
header names the generation, so the same answer can be resumed or watched on
``/v1/generations/{id}/events``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson
import redis
from flask import Blueprint, Response

from app.errors import ApiError, invalid, openai_error
from app.inputs import authenticate, json_body
from app.responses import json_response
from app.schemas import ChatChoice, ChatCompletion, ChatMessage, ChatUsage
from app.services import services
from app.streaming import KEEPALIVE_FRAME, follow, one_by_one
from app.submit import submit_generation
from bridge import keys
from bridge.events import ClientEvent, EventType
from bridge.generation import ANSWER_FIELDS

logger = logging.getLogger(__name__)

bp = Blueprint("openai", __name__, url_prefix="/v1")
bp.before_request(authenticate)

# OpenAI request fields that change nothing here (``store``: OpenAI's own record of a completion).
_ACCEPTED_AND_IGNORED = {"store"}
# Fields of a generation request under the same name (top_k, Anthropic's, rides along for Anthropic models).
_AS_THEY_ARE = (
    "model",
    "temperature",
    "stop",
    "metadata",
    "tools",
    "tool_choice",
    *ANSWER_FIELDS,
    "user",
)
_MAPPED = {"messages", "stream", "stream_options", "max_tokens", "max_completion_tokens", "n", "tokenbridge"}
_MAPPED |= set(_AS_THEY_ARE)
# Fields of an assistant message as OpenAI returns it, which clients send back: tokenbridge has no use for them.
_OUTPUT_FIELDS = ("refusal", "audio", "annotations")


def _to_generation(body: dict[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(body) - _MAPPED - _ACCEPTED_AND_IGNORED)
    details = [{"field": name, "message": "Not supported by this endpoint.", "type": "unsupported"} for name in unknown]
    if body.get("n", 1) != 1:
        details.append({"field": "n", "message": "Only n = 1 is supported.", "type": "unsupported"})
    if details:
        raise invalid(details)
    messages = body.get("messages")
    if isinstance(messages, list):
        messages = [_without_output_fields(message) for message in messages]
    extra: dict[str, Any] = body["tokenbridge"] if isinstance(body.get("tokenbridge"), dict) else {}
    request: dict[str, Any] = {name: body.get(name) for name in _AS_THEY_ARE}
    request |= {
        "messages": messages,
        "max_tokens": body.get("max_completion_tokens") or body.get("max_tokens"),
        # tokenbridge's own fields ride in "tokenbridge": {"session_id": ..., "options": {...}}
        "session_id": extra.get("session_id"),
        "options": extra.get("options"),
    }
    return {k: v for k, v in request.items() if v is not None}


def _without_output_fields(message: Any) -> Any:
    """A message without ``refusal``, ``audio`` and ``annotations``; its content (string or parts) as it came."""
    if not isinstance(message, dict):
        return message
    return {k: v for k, v in message.items() if k not in _OUTPUT_FIELDS}


def _tool_call_delta(data: dict[str, Any]) -> dict[str, Any]:
    """A ``tool_call`` event as an entry of OpenAI's ``delta.tool_calls``."""
    call: dict[str, Any] = {"index": data.get("index", 0)}
    function: dict[str, Any] = {"arguments": data.get("arguments", "")}
    if data.get("id") is not None:
        call["id"] = data["id"]
        call["type"] = "function"
    if data.get("name") is not None:
        function["name"] = data["name"]
    call["function"] = function
    return call


def _error_chunk(code: str, message: str) -> str:
    """The chunk that ends a stream that cannot finish: the ``openai`` package raises ``APIError`` for it."""
    return f"data: {orjson.dumps({'error': openai_error(500, code, message)}).decode()}\n\n"


def _usage(data: dict[str, Any]) -> dict[str, int]:
    usage = data.get("usage") or {}
    prompt, completion = int(usage.get("prompt_tokens", 0)), int(usage.get("completion_tokens", 0))
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _events(generation_id: str) -> Iterator[ClientEvent | None]:
    s = services()
    return one_by_one(
        follow(
            s.hub,
            s.redis,
            keys.gen_out(generation_id),
            "0",
            keepalive_s=s.settings.sse_keepalive_s,
            max_duration_s=s.settings.generation_max_duration_s + 60,
        )
    )


@bp.post("/chat/completions")
def chat_completions() -> Response:
    body = json_body()
    submitted = submit_generation(_to_generation(body))
    generation_id = submitted.generation_id
    headers = {**submitted.headers, "x-tokenbridge-generation-id": generation_id}
    options: dict[str, Any] = body["stream_options"] if isinstance(body.get("stream_options"), dict) else {}
    reply = _Reply(generation_id, submitted.payload.model, int(time.time()), bool(options.get("include_usage")))
    events = _events(generation_id)
    if body.get("stream"):
        response = Response(_stream(reply, events), mimetype="text/event-stream", headers=headers)
        response.headers["Cache-Control"] = "no-cache"
        response.headers["X-Accel-Buffering"] = "no"
        return response
    return json_response(_completion(reply, events, headers), 200, headers)


@dataclass(frozen=True, slots=True)
class _Reply:
    """What every chunk of one answer (and its whole completion) carries."""

    generation_id: str
    model: str
    created: int
    include_usage: bool

    @property
    def id(self) -> str:
        return f"chatcmpl-{self.generation_id}"

    def chunk(self, delta: dict[str, Any], finish: str | None) -> str:
        choice = {"index": 0, "delta": delta, "finish_reason": finish}
        payload = {"id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model}
        return f"data: {orjson.dumps({**payload, 'choices': [choice]}).decode()}\n\n"


# -- streamed ------------------------------------------------------------------------------------------------


def _stream(reply: _Reply, events: Iterator[ClientEvent | None]) -> Iterator[str]:
    """The answer as chat.completion.chunk events, ended by ``[DONE]`` or by an error chunk."""
    yield reply.chunk({"role": "assistant", "content": ""}, None)
    try:
        for event in events:
            if event is None:
                yield KEEPALIVE_FRAME
                continue
            chunks, last = _chunks(reply, event)
            yield from chunks
            if last:
                return
        # The maximum duration passed, or this process is stopping: the generation goes on elsewhere.
        message = f"The stream ended early; read the generation from /v1/generations/{reply.generation_id}/events."
        yield _error_chunk("stream_ended", message)
    except redis.RedisError as exc:
        logger.warning("Chat completion %s ended early: %s", reply.generation_id, exc)
        yield _error_chunk("redis_unavailable", "The stream store became unavailable; retry shortly.")


def _chunks(reply: _Reply, event: ClientEvent) -> tuple[list[str], bool]:
    """What one event becomes in the stream, and whether the stream ends with it."""
    data = event.json()
    if event.event == EventType.TOKEN.value:
        return [reply.chunk({"content": data.get("content", "")}, None)], False
    if event.event == EventType.TOOL_CALL.value:
        return [reply.chunk({"tool_calls": [_tool_call_delta(data)]}, None)], False
    if event.event == EventType.REASONING.value:
        # The field DeepSeek, vLLM and OpenRouter's SDK users read reasoning from.
        return [reply.chunk({"reasoning_content": data.get("content", "")}, None)], False
    if event.event == EventType.RESTART.value:
        # The protocol cannot take back what was sent: end with an error naming the resumable stream.
        message = f"The generation restarted; read it from /v1/generations/{reply.generation_id}/events."
        return [_error_chunk("generation_restarted", message)], True
    if event.event == EventType.ERROR.value:
        return [_error_chunk(str(data.get("code") or "provider_error"), str(data.get("message", "")))], True
    if not event.terminal:
        return [], False
    chunks = [reply.chunk({}, _finish_reason(event, data))]
    if reply.include_usage:
        usage = {"id": reply.id, "object": "chat.completion.chunk", "created": reply.created, "model": reply.model}
        usage |= {"choices": [], "usage": _usage(data)}
        chunks.append(f"data: {orjson.dumps(usage).decode()}\n\n")
    return [*chunks, "data: [DONE]\n\n"], True


def _finish_reason(terminal: ClientEvent, data: dict[str, Any]) -> Any:
    return data.get("finish_reason", "stop") if terminal.event == EventType.DONE.value else "cancelled"


# -- whole ---------------------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Answer:
    """The assistant message gathered from a generation's events (a restart starts it over)."""

    text: str = ""
    reasoning: str = ""
    calls: dict[int, dict[str, Any]] = field(default_factory=dict)

    def add(self, event: ClientEvent) -> None:
        if event.event == EventType.TOKEN.value:
            self.text += event.json().get("content", "")
        elif event.event == EventType.REASONING.value:
            self.reasoning += event.json().get("content", "")
        elif event.event == EventType.TOOL_CALL.value:
            delta = event.json()
            call = self.calls.setdefault(
                int(delta.get("index", 0)), {"id": "", "type": "function", "function": {"name": "", "arguments": ""}}
            )
            call["id"] = delta.get("id") or call["id"]
            call["function"]["name"] = delta.get("name") or call["function"]["name"]
            call["function"]["arguments"] += delta.get("arguments", "")
        elif event.event == EventType.RESTART.value:
            self.text, self.reasoning, self.calls = "", "", {}

    def message(self) -> ChatMessage:
        """Its text, and its reasoning and tool calls when it has them."""
        return ChatMessage(
            role="assistant",
            content=self.text if self.text or not self.calls else None,
            reasoning_content=self.reasoning or None,
            tool_calls=[self.calls[index] for index in sorted(self.calls)] if self.calls else None,
        )


def _completion(reply: _Reply, events: Iterator[ClientEvent | None], headers: dict[str, str]) -> ChatCompletion:
    """The whole chat.completion once the generation ended; 504 when it did not in time, 502 when it failed."""
    answer = _Answer()
    terminal = None
    for event in events:
        if event is None:
            continue
        if event.terminal:
            terminal = event
            break
        answer.add(event)
    if terminal is None:
        raise ApiError(504, "timeout", "The generation did not finish in time.", headers=headers)
    data = terminal.json()
    if terminal.event == EventType.ERROR.value:
        raise ApiError(502, str(data.get("code") or "provider_error"), str(data.get("message", "")), headers=headers)
    return ChatCompletion(
        id=reply.id,
        object="chat.completion",
        created=reply.created,
        model=reply.model,
        choices=[ChatChoice(index=0, message=answer.message(), finish_reason=_finish_reason(terminal, data))],
        usage=ChatUsage(**_usage(data)),
    )

"""``POST /v1/chat/completions``: the OpenAI Chat Completions protocol, backed by a tokenbridge generation.

Any OpenAI client library streams through the bridge unchanged. The ``x-tokenbridge-generation-id``
header names the generation, so the same answer can be resumed or watched on
``/v1/generations/{id}/events``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import Any

import orjson
import redis
from flask import Blueprint, Response, jsonify

from app.errors import ApiError, invalid, openai_error
from app.inputs import authenticate, json_body
from app.services import services
from app.streaming import KEEPALIVE_FRAME, follow, one_by_one
from app.submit import submit_generation
from bridge import keys
from bridge.events import ClientEvent, EventType

logger = logging.getLogger(__name__)

bp = Blueprint("openai", __name__, url_prefix="/v1")
bp.before_request(authenticate)

# OpenAI request fields that change nothing here (or only for the upstream's sampling).
_ACCEPTED_AND_IGNORED = {
    "user",
    "top_p",
    "presence_penalty",
    "frequency_penalty",
    "seed",
    "logit_bias",
    "store",
    "parallel_tool_calls",
}
_MAPPED = {
    "model",
    "messages",
    "stream",
    "stream_options",
    "max_tokens",
    "max_completion_tokens",
    "temperature",
    "stop",
}
_MAPPED |= {"n", "metadata", "tokenbridge", "tools", "tool_choice"}


def _to_generation(body: dict[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(body) - _MAPPED - _ACCEPTED_AND_IGNORED)
    details = [{"field": name, "message": "Not supported by this endpoint.", "type": "unsupported"} for name in unknown]
    if body.get("n", 1) != 1:
        details.append({"field": "n", "message": "Only n = 1 is supported.", "type": "unsupported"})
    if details:
        raise invalid(details)
    messages = body.get("messages")
    if isinstance(messages, list):
        messages = [_flatten(message) for message in messages]
    extra: dict[str, Any] = body["tokenbridge"] if isinstance(body.get("tokenbridge"), dict) else {}
    request: dict[str, Any] = {
        "model": body.get("model"),
        "messages": messages,
        "max_tokens": body.get("max_completion_tokens") or body.get("max_tokens"),
        "temperature": body.get("temperature"),
        "stop": body.get("stop"),
        "metadata": body.get("metadata"),
        "tools": body.get("tools"),
        "tool_choice": body.get("tool_choice"),
        # tokenbridge's own fields ride in "tokenbridge": {"session_id": ..., "options": {...}}
        "session_id": extra.get("session_id"),
        "options": extra.get("options"),
    }
    return {k: v for k, v in request.items() if v is not None}


def _flatten(message: Any) -> Any:
    """OpenAI content may be a list of parts: keep the text ones. Fields tokenbridge has no use for (``refusal``,
    ``audio``) are dropped."""
    if not isinstance(message, dict):
        return message
    message = {k: v for k, v in message.items() if k not in ("refusal", "audio", "annotations")}
    if isinstance(message.get("content"), list):
        text = "".join(p.get("text", "") for p in message["content"] if isinstance(p, dict) and p.get("type") == "text")
        return {**message, "content": text}
    return message


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


def _chunk(cid: str, created: int, model: str, delta: dict[str, Any], finish: str | None) -> str:
    choice = {"index": 0, "delta": delta, "finish_reason": finish}
    payload = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model, "choices": [choice]}
    return f"data: {orjson.dumps(payload).decode()}\n\n"


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
def chat_completions() -> Response | tuple[Response, int, dict[str, str]]:
    body = json_body()
    submitted = submit_generation(_to_generation(body))
    generation_id = submitted.generation_id
    model = str(submitted.payload["model"])
    headers = {**submitted.headers, "x-tokenbridge-generation-id": generation_id}
    cid, created = f"chatcmpl-{generation_id}", int(time.time())
    options: dict[str, Any] = body["stream_options"] if isinstance(body.get("stream_options"), dict) else {}
    include_usage = bool(options.get("include_usage"))
    events = _events(generation_id)

    if body.get("stream"):

        def stream() -> Iterator[str]:
            yield _chunk(cid, created, model, {"role": "assistant", "content": ""}, None)
            try:
                for event in events:
                    if event is None:
                        yield KEEPALIVE_FRAME
                        continue
                    data = event.json()
                    if event.event == EventType.TOKEN.value:
                        yield _chunk(cid, created, model, {"content": data.get("content", "")}, None)
                    elif event.event == EventType.TOOL_CALL.value:
                        yield _chunk(cid, created, model, {"tool_calls": [_tool_call_delta(data)]}, None)
                    elif event.event == EventType.REASONING.value:
                        # The field DeepSeek, vLLM and OpenRouter's SDK users read reasoning from.
                        yield _chunk(cid, created, model, {"reasoning_content": data.get("content", "")}, None)
                    elif event.event == EventType.RESTART.value:
                        # The protocol cannot take back what was sent: end with an error naming the resumable stream.
                        message = f"The generation restarted; read it from /v1/generations/{generation_id}/events."
                        yield _error_chunk("generation_restarted", message)
                        return
                    elif event.event == EventType.ERROR.value:
                        yield _error_chunk(str(data.get("code") or "provider_error"), str(data.get("message", "")))
                        return
                    elif event.terminal:
                        reason = (
                            data.get("finish_reason", "stop") if event.event == EventType.DONE.value else "cancelled"
                        )
                        yield _chunk(cid, created, model, {}, reason)
                        if include_usage:
                            usage = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model}
                            usage |= {"choices": [], "usage": _usage(data)}
                            yield f"data: {orjson.dumps(usage).decode()}\n\n"
                        yield "data: [DONE]\n\n"
                        return
                # The maximum duration passed, or this process is stopping: the generation goes on elsewhere.
                message = f"The stream ended early; read the generation from /v1/generations/{generation_id}/events."
                yield _error_chunk("stream_ended", message)
            except redis.RedisError as exc:
                logger.warning("Chat completion %s ended early: %s", generation_id, exc)
                yield _error_chunk("redis_unavailable", "The stream store became unavailable; retry shortly.")

        response = Response(stream(), mimetype="text/event-stream", headers=headers)
        response.headers["Cache-Control"] = "no-cache"
        response.headers["X-Accel-Buffering"] = "no"
        return response

    text, reasoning, terminal = "", "", None
    calls: dict[int, dict[str, Any]] = {}
    for event in events:
        if event is None:
            continue
        if event.event == EventType.TOKEN.value:
            text += event.json().get("content", "")
        elif event.event == EventType.REASONING.value:
            reasoning += event.json().get("content", "")
        elif event.event == EventType.TOOL_CALL.value:
            delta = event.json()
            call = calls.setdefault(
                int(delta.get("index", 0)), {"id": "", "type": "function", "function": {"name": "", "arguments": ""}}
            )
            call["id"] = delta.get("id") or call["id"]
            call["function"]["name"] = delta.get("name") or call["function"]["name"]
            call["function"]["arguments"] += delta.get("arguments", "")
        elif event.event == EventType.RESTART.value:
            text, reasoning, calls = "", "", {}
        elif event.terminal:
            terminal = event
            break
    if terminal is None:
        raise ApiError(504, "timeout", "The generation did not finish in time.", headers=headers)
    data = terminal.json()
    if terminal.event == EventType.ERROR.value:
        raise ApiError(502, str(data.get("code") or "provider_error"), str(data.get("message", "")), headers=headers)
    reason = data.get("finish_reason", "stop") if terminal.event == EventType.DONE.value else "cancelled"
    completion = {
        "id": cid,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "message": _message(text, reasoning, calls), "finish_reason": reason}],
        "usage": _usage(data),
    }
    return jsonify(completion), 200, headers


def _message(text: str, reasoning: str, calls: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """The assistant message of a whole completion: its text, and its reasoning and tool calls when it has them."""
    message: dict[str, Any] = {"role": "assistant", "content": text if text or not calls else None}
    if reasoning:
        message["reasoning_content"] = reasoning
    if calls:
        message["tool_calls"] = [calls[index] for index in sorted(calls)]
    return message

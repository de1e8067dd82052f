"""A local stand-in for real model APIs, speaking their streaming wire formats: OpenAI Chat Completions at
``/v1/chat/completions`` and Anthropic Messages at ``/v1/messages``. It echoes the last user message word
by word, so a test knows exactly what the model "said"."""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

WORDS = re.compile(r"^\s+|\S+\s*")


def _answer(body: dict[str, Any]) -> list[str]:
    users = [m["content"] for m in body.get("messages", []) if m.get("role") == "user"]
    last = users[-1] if users else ""
    if isinstance(last, list):  # Anthropic content blocks: the text of text blocks and tool results
        last = " ".join(str(b.get("text") or b.get("content") or "") for b in last if isinstance(b, dict))
    return WORDS.findall(last)


def _tool_call(body: dict[str, Any]) -> tuple[str, str] | None:
    """With tools offered and no tool result yet, the fake calls the first tool with the user's words as
    ``{"query": ...}``: (tool name, arguments as JSON text)."""
    tools = body.get("tools") or []
    answered = any(
        m.get("role") == "tool"
        or (isinstance(m.get("content"), list) and any(b.get("type") == "tool_result" for b in m["content"]))
        for m in body.get("messages", [])
    )
    if not tools or answered:
        return None
    tool = tools[0]
    name = tool["function"]["name"] if "function" in tool else tool["name"]
    return name, json.dumps({"query": "".join(_answer(body)).strip()})


class _Handler(BaseHTTPRequestHandler):
    server: FakeUpstream  # type: ignore[assignment]
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: object) -> None:  # quiet
        pass

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
        self.server.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
        if self.path.endswith("/chat/completions"):
            self._stream(self._openai(body))
        elif self.path.endswith("/messages"):
            self._stream(self._anthropic(body))
        else:
            self.send_error(404)

    def _stream(self, frames: Iterator[str]) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        try:
            for frame in frames:
                data = frame.encode()
                self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
                self.wfile.flush()
                time.sleep(self.server.delay_s)
            self.wfile.write(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass

    def _openai(self, body: dict[str, Any]) -> Iterator[str]:
        words = _answer(body)
        limit = body.get("max_tokens") or len(words)
        base = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 1, "model": body["model"]}
        yield f"data: {json.dumps({**base, 'choices': [{'index': 0, 'delta': {'role': 'assistant'}}]})}\n\n"
        yield ": keep-alive\n\n"
        call = _tool_call(body)
        if call is not None:
            name, arguments = call
            first = {"index": 0, "id": "call_fake1", "type": "function", "function": {"name": name, "arguments": ""}}
            yield f"data: {json.dumps({**base, 'choices': [{'index': 0, 'delta': {'tool_calls': [first]}}]})}\n\n"
            for piece in (arguments[: len(arguments) // 2], arguments[len(arguments) // 2 :]):
                delta = {"tool_calls": [{"index": 0, "function": {"arguments": piece}}]}
                yield f"data: {json.dumps({**base, 'choices': [{'index': 0, 'delta': delta}]})}\n\n"
            end = {"index": 0, "delta": {}, "finish_reason": "tool_calls"}
            yield f"data: {json.dumps({**base, 'choices': [end]})}\n\n"
            yield "data: [DONE]\n\n"
            return
        for word in words[:limit]:
            yield f"data: {json.dumps({**base, 'choices': [{'index': 0, 'delta': {'content': word}}]})}\n\n"
        reason = "length" if limit < len(words) else "stop"
        yield f"data: {json.dumps({**base, 'choices': [{'index': 0, 'delta': {}, 'finish_reason': reason}]})}\n\n"
        usage = {"prompt_tokens": len(words), "completion_tokens": min(limit, len(words)), "total_tokens": 0}
        yield f"data: {json.dumps({**base, 'choices': [], 'usage': usage})}\n\n"
        yield "data: [DONE]\n\n"

    def _anthropic(self, body: dict[str, Any]) -> Iterator[str]:
        words = _answer(body)
        limit = body.get("max_tokens") or len(words)

        def event(name: str, data: dict[str, Any]) -> str:
            return f"event: {name}\ndata: {json.dumps(data)}\n\n"

        yield event("message_start", {"type": "message_start", "message": {"usage": {"input_tokens": len(words)}}})
        yield event(
            "content_block_start",
            {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        )
        yield event("ping", {"type": "ping"})
        call = _tool_call(body)
        if call is not None:
            name, arguments = call
            yield event("content_block_stop", {"type": "content_block_stop", "index": 0})
            block = {"type": "tool_use", "id": "toolu_fake1", "name": name, "input": {}}
            yield event("content_block_start", {"type": "content_block_start", "index": 1, "content_block": block})
            for piece in (arguments[: len(arguments) // 2], arguments[len(arguments) // 2 :]):
                delta = {"type": "input_json_delta", "partial_json": piece}
                yield event("content_block_delta", {"type": "content_block_delta", "index": 1, "delta": delta})
            yield event("content_block_stop", {"type": "content_block_stop", "index": 1})
            usage = {"output_tokens": 7}
            yield event(
                "message_delta", {"type": "message_delta", "delta": {"stop_reason": "tool_use"}, "usage": usage}
            )
            yield event("message_stop", {"type": "message_stop"})
            return
        for word in words[:limit]:
            yield event(
                "content_block_delta",
                {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": word}},
            )
        yield event("content_block_stop", {"type": "content_block_stop", "index": 0})
        reason = "max_tokens" if limit < len(words) else "end_turn"
        yield event(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": reason},
                "usage": {"output_tokens": min(limit, len(words))},
            },
        )
        yield event("message_stop", {"type": "message_stop"})


class FakeUpstream(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, *, delay_s: float = 0.005) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.delay_s = delay_s
        self.requests: list[dict[str, Any]] = []
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"

    def __enter__(self) -> FakeUpstream:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
        self.server_close()

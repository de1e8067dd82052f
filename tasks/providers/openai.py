"""OpenAI-compatible Chat Completions, and the streaming HTTP plumbing that the HTTP providers share.

``OpenAIChatProvider`` speaks ``POST {base_url}/chat/completions`` with ``stream: true``: OpenAI, vLLM, Ollama,
llama.cpp server, LM Studio, TGI and OpenRouter all answer it with server-sent events. ``relay`` runs one such
request: it maps failures to ``ProviderError`` (retryable only before the first token) and shuts the connection
down as soon as ``stop`` is set.
"""

from __future__ import annotations

import contextlib
import email.utils
import re
import socket
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import httpx
import orjson

from bridge.errors import ProviderError
from bridge.events import EventType
from bridge.generation import GenerationRequest
from bridge.models import ModelSpec
from bridge.producer import Chunk, Delta, Finish
from tasks.providers.base import Provider

# How often the watcher looks at ``stop``: the longest a cancelled upstream request stays open.
CANCEL_POLL_S = 0.05
# A longer SSE line or event is a broken upstream, not a token.
MAX_EVENT_BYTES = 1 << 20
# Enough of an error body to quote its message.
MAX_ERROR_BODY_BYTES = 64 * 1024
MAX_ERROR_MESSAGE_CHARS = 500

_LINE_END = re.compile(rb"\r\n|\r|\n")
_CONNECTED = ("connection.connect_tcp.complete", "connection.start_tls.complete")


@dataclass(frozen=True, slots=True)
class ServerSentEvent:
    event: str
    data: str


class _EventBuilder:
    """Turns event-stream lines into events (the WHATWG rules: ``:`` comments, ``field: value``, blank ends)."""

    def __init__(self) -> None:
        self._name = ""
        self._data: list[str] = []
        self._size = 0

    def line(self, line: str) -> ServerSentEvent | None:
        if not line:
            event = ServerSentEvent(self._name or "message", "\n".join(self._data)) if self._data else None
            self._name, self._data, self._size = "", [], 0
            return event
        if line.startswith(":"):  # a comment, such as ": keep-alive"
            return None
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            self._size += len(value)
            if self._size > MAX_EVENT_BYTES:
                raise ProviderError("the upstream sent an oversized event", code="provider_error")
            self._data.append(value)
        elif name == "event":
            self._name = value
        # ``id`` and ``retry`` only matter to a client that reconnects; this one never does.
        return None


def iter_events(chunks: Iterable[bytes]) -> Iterator[ServerSentEvent]:
    """Parse server-sent events from network chunks, which may split a line (or a ``\\r\\n``) anywhere."""
    builder = _EventBuilder()
    buffer = bytearray()
    for chunk in chunks:
        buffer += chunk
        start = 0
        while (match := _LINE_END.search(buffer, start)) is not None:
            if match.group() == b"\r" and match.end() == len(buffer):
                break  # maybe the first half of a "\r\n"
            event = builder.line(buffer[start : match.start()].decode("utf-8", "replace"))
            start = match.end()
            if event is not None:
                yield event
        del buffer[:start]
        if len(buffer) > MAX_EVENT_BYTES:
            raise ProviderError("the upstream sent an oversized line", code="provider_error")
    # Lenient at the end: a last line or event without its terminator still counts.
    for line in (buffer.decode("utf-8", "replace"), ""):
        if (event := builder.line(line)) is not None:
            yield event


class EventDecoder(Protocol):
    """The provider-specific part of a stream: events in, tokens out, then the ``Finish``."""

    ended: bool

    def feed(self, event: ServerSentEvent) -> Iterator[str | Delta]:
        """Tokens (and reasoning or tool-call deltas) in ``event``.

        Raises ``ProviderError`` (as it would be before the first token) on an error event.
        """
        ...

    def finish(self) -> Finish:
        """The end of the answer; raises ``ProviderError`` when the stream stopped short of it."""
        ...


class _ConnectionGuard:
    """Shuts the upstream connection down from a watcher thread as soon as ``stop`` is set.

    Closing a socket does not wake a thread blocked reading it, but shutting it down does. The connection is known
    from the moment it is opened (httpcore's ``trace`` extension) and, at the latest, from the response headers.
    """

    def __init__(self, stop: threading.Event) -> None:
        self._stop = stop
        self._done = threading.Event()
        self._lock = threading.Lock()
        self._stream: Any = None
        self._cancelled = False
        self._thread = threading.Thread(target=self._watch, name="upstream-cancel", daemon=True)

    def __enter__(self) -> _ConnectionGuard:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def trace(self, name: str, info: dict[str, Any]) -> None:
        """httpcore ``trace`` callback: note each connection as it opens (TLS replaces the plain one)."""
        if name in _CONNECTED:
            self.attach(info.get("return_value"))

    def attach(self, network_stream: Any) -> None:
        with self._lock:
            if network_stream is None or self._done.is_set():
                return
            self._stream = network_stream
            if self._cancelled:
                _shutdown(network_stream)

    def close(self) -> None:
        """End the watcher; call before the connection is closed so that it never touches a closed socket."""
        self._done.set()
        if self._thread.is_alive():
            self._thread.join()

    def _watch(self) -> None:
        while not self._done.wait(CANCEL_POLL_S):
            if self._stop.is_set():
                with self._lock:
                    if self._done.is_set():
                        return
                    self._cancelled = True
                    if self._stream is not None:
                        _shutdown(self._stream)
                return


def _shutdown(network_stream: Any) -> None:
    sock = network_stream.get_extra_info("socket")
    if isinstance(sock, socket.socket):
        with contextlib.suppress(OSError):
            # The plain call: ``SSLSocket.shutdown`` would also drop its TLS state under the reading thread.
            socket.socket.shutdown(sock, socket.SHUT_RDWR)


@dataclass(frozen=True, slots=True)
class Upstream:
    """Names an upstream in error messages, and keeps its key out of them."""

    label: str
    secret: str | None = field(default=None, repr=False)

    @classmethod
    def of(cls, spec: ModelSpec) -> Upstream:
        host = httpx.URL(spec.base_url or "").host or "?"
        return cls(f"model {spec.name!r} ({spec.provider} at {host})", spec.api_key())

    def error(
        self, message: str, *, retryable: bool, code: str | None = None, retry_after_s: float | None = None
    ) -> ProviderError:
        """A ``ProviderError`` as it is before the first token: ``provider_unavailable`` when worth a retry."""
        if code is None:
            code = "provider_unavailable" if retryable else "provider_rejected"
        return ProviderError(
            self.redact(f"{self.label}: {message}"), code=code, retryable=retryable, retry_after_s=retry_after_s
        )

    def redact(self, text: str) -> str:
        return text.replace(self.secret, "[redacted]") if self.secret else text

    def transport_error(self, exc: httpx.HTTPError) -> ProviderError:
        if isinstance(exc, httpx.TimeoutException):
            return self.error(f"timed out ({type(exc).__name__})", retryable=True)
        if isinstance(exc, httpx.NetworkError | httpx.RemoteProtocolError | httpx.ProxyError):
            return self.error(f"{type(exc).__name__}: {exc}", retryable=True)
        return self.error(f"{type(exc).__name__}: {exc}", retryable=False)

    def status_error(self, response: httpx.Response, body: bytes) -> ProviderError:
        status = response.status_code
        message = f"HTTP {status}: {error_message(body) or response.reason_phrase}"
        if status in (408, 429) or status >= 500:
            return self.error(message, retryable=True, retry_after_s=retry_after(response.headers))
        return self.error(message, retryable=False)


def error_message(body: Any) -> str:
    """The message of an upstream error (raw bytes or parsed): ``{"error": {"message": ...}}`` and its variants."""
    document = body
    if isinstance(body, bytes | bytearray):
        try:
            document = orjson.loads(body)
        except orjson.JSONDecodeError:
            return body.decode("utf-8", "replace").strip()[:MAX_ERROR_MESSAGE_CHARS]
    message: Any = document
    if isinstance(document, dict):
        message = document.get("error") or document.get("message") or document.get("detail") or document
        if isinstance(message, dict):
            message = message.get("message") or message
    text = message if isinstance(message, str) else orjson.dumps(message).decode()
    return text[:MAX_ERROR_MESSAGE_CHARS]


def retry_after(headers: httpx.Headers) -> float | None:
    """Seconds from ``retry-after-ms`` or ``Retry-After`` (seconds or an HTTP date); None when absent."""
    with contextlib.suppress(ValueError):
        if "retry-after-ms" in headers:
            return max(float(headers["retry-after-ms"]) / 1000, 0.0)
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(when.timestamp() - time.time(), 0.0)


def _read_capped(response: httpx.Response) -> bytes:
    body = bytearray()
    for chunk in response.iter_bytes():
        body += chunk
        if len(body) >= MAX_ERROR_BODY_BYTES:
            break
    return bytes(body)


def relay(
    client: httpx.Client,
    request: httpx.Request,
    stop: threading.Event,
    decoder: EventDecoder,
    upstream: Upstream,
) -> Iterator[Chunk]:
    """Send ``request`` and yield what ``decoder`` makes of its event stream, then the ``Finish``.

    Failures before the first token keep the decoder's or the status's verdict (a retryable
    ``provider_unavailable``, or ``provider_rejected``); after it, every failure is a final ``provider_error``.
    Once ``stop`` is set the connection is shut down and the iterator ends without an error.
    """
    if stop.is_set():
        return
    tokens = 0
    with _ConnectionGuard(stop) as guard:
        request.extensions["trace"] = guard.trace
        try:
            response = client.send(request, stream=True)
        except httpx.HTTPError as exc:
            if stop.is_set():
                return
            raise upstream.transport_error(exc) from exc
        try:
            guard.attach(response.extensions.get("network_stream"))
            if not response.is_success:
                raise upstream.status_error(response, _read_capped(response))
            if response.headers.get("content-type", "").startswith("application/json"):
                # Not a stream: an error, or a server that ignored ``stream: true``.
                body = error_message(_read_capped(response))
                raise upstream.error(f"expected an event stream: {body}", retryable=False)
            for event in iter_events(response.iter_bytes()):
                for token in decoder.feed(event):
                    tokens += 1
                    yield token
                if decoder.ended or stop.is_set():
                    break
            if stop.is_set():
                return
            yield decoder.finish()
        except httpx.HTTPError as exc:
            if stop.is_set():
                return
            error = upstream.transport_error(exc)
            if tokens:
                raise ProviderError(f"{error} (after {tokens} tokens)", code="provider_error") from exc
            raise error from exc
        except ProviderError as exc:
            if stop.is_set():
                return
            if tokens:
                message = upstream.redact(f"{exc} (after {tokens} tokens)")
                raise ProviderError(message, code="provider_error") from exc
            raise
        finally:
            guard.close()
            response.close()


def chat_messages(request: GenerationRequest) -> list[dict[str, Any]]:
    """The request's messages in the Chat Completions shape; a prompt is one user message."""
    if request.messages is None:
        return [{"role": "user", "content": request.prompt or ""}]
    return [message.model_dump(exclude_none=True) for message in request.messages]


def new_client(spec: ModelSpec) -> httpx.Client:
    """A client for one upstream.

    Without keep-alive each generation opens its own connection, so that a cancel can always reach it: a pooled
    connection waiting for its response headers could not be told apart from the others.
    """
    return httpx.Client(timeout=spec.timeout_s, limits=httpx.Limits(max_keepalive_connections=0))


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
        try:
            chunk = orjson.loads(event.data)
        except orjson.JSONDecodeError:
            raise self.upstream.error(f"malformed event data: {event.data[:200]!r}", retryable=False) from None
        if not isinstance(chunk, dict):
            raise self.upstream.error(f"unexpected event data: {event.data[:200]!r}", retryable=False)
        if chunk.get("error") or event.event == "error":
            raise self._stream_error(chunk.get("error") or chunk)
        usage = chunk.get("usage")
        if isinstance(usage, dict):
            self.usage = {k: v for k in ("prompt_tokens", "completion_tokens") if isinstance(v := usage.get(k), int)}
        for choice in chunk.get("choices") or []:
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue
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


class UpstreamProvider(Provider):
    """A provider that streams from an HTTP API at ``spec.base_url`` + ``endpoint``.

    ``client`` is for tests and for sharing a pool; a client with keep-alive cannot cancel a request that is still
    waiting for its headers on a reused connection until they arrive. The provider closes only a client it made.
    """

    endpoint = ""

    def __init__(self, spec: ModelSpec, *, client: httpx.Client | None = None) -> None:
        if not spec.base_url:
            raise ValueError(f"model {spec.name!r} needs a base_url")
        self.spec = spec
        self._url = spec.base_url.rstrip("/") + self.endpoint
        self._owns_client = client is None
        self._client = client if client is not None else new_client(spec)

    def close(self) -> None:
        if self._owns_client:
            self._client.close()


class OpenAIChatProvider(UpstreamProvider):
    """Streams an OpenAI-compatible Chat Completions endpoint."""

    endpoint = "/chat/completions"

    def stream(self, request: GenerationRequest, stop: threading.Event) -> Iterator[Chunk]:
        upstream = Upstream.of(self.spec)
        headers = {"Accept": "text/event-stream"}
        if upstream.secret:
            headers["Authorization"] = f"Bearer {upstream.secret}"
        headers.update(self.spec.headers)
        http_request = self._client.build_request("POST", self._url, json=self.body(request), headers=headers)
        yield from relay(self._client, http_request, stop, _ChatCompletionDecoder(upstream), upstream)

    def body(self, request: GenerationRequest) -> dict[str, Any]:
        """The upstream request body."""
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
        return body

"""The streaming HTTP plumbing the HTTP providers share.

``relay`` runs one streaming request: it maps failures to ``ProviderError`` (retryable only before the first
token) and shuts the connection down as soon as ``stop`` is set. An ``EventDecoder`` is the part each wire format
brings: events in, tokens out, then the ``Finish``.
"""

from __future__ import annotations

import contextlib
import email.utils
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import httpx
import orjson

from bridge.errors import ProviderError
from bridge.models import ModelSpec
from bridge.producer import Chunk, Delta, Finish
from tasks.providers.base import Provider
from tasks.providers.sse import ServerSentEvent, iter_events

# How often the watcher looks at ``stop``: the longest a cancelled upstream request stays open.
CANCEL_POLL_S = 0.05
# Enough of an error body to quote its message.
MAX_ERROR_BODY_BYTES = 64 * 1024
MAX_ERROR_MESSAGE_CHARS = 500

_CONNECTED = ("connection.connect_tcp.complete", "connection.start_tls.complete")


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

    def event_object(self, event: ServerSentEvent, what: str) -> dict[str, Any]:
        """The JSON object ``event`` carries; a ``provider_rejected`` error naming ``what`` when it is anything else."""
        try:
            data = orjson.loads(event.data)
        except orjson.JSONDecodeError:
            raise self.error(f"malformed {what}: {event.data[:200]!r}", retryable=False) from None
        if not isinstance(data, dict):
            raise self.error(f"unexpected {what}: {event.data[:200]!r}", retryable=False)
        return data

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
            for chunk in _decode(response, stop, decoder, upstream):
                if not isinstance(chunk, Finish):
                    tokens += 1
                yield chunk
        except httpx.HTTPError as exc:
            if stop.is_set():
                return
            error = upstream.transport_error(exc)
            raise (_after_tokens(error, tokens, upstream) if tokens else error) from exc
        except ProviderError as exc:
            if stop.is_set():
                return
            if tokens:
                raise _after_tokens(exc, tokens, upstream) from exc
            raise
        finally:
            guard.close()
            response.close()


def _decode(
    response: httpx.Response, stop: threading.Event, decoder: EventDecoder, upstream: Upstream
) -> Iterator[Chunk]:
    """What ``decoder`` makes of the response's events, then its ``Finish``; nothing more once ``stop`` is set."""
    if not response.is_success:
        raise upstream.status_error(response, _read_capped(response))
    if response.headers.get("content-type", "").startswith("application/json"):
        # Not a stream: an error, or a server that ignored ``stream: true``.
        body = error_message(_read_capped(response))
        raise upstream.error(f"expected an event stream: {body}", retryable=False)
    for event in iter_events(response.iter_bytes()):
        yield from decoder.feed(event)
        if decoder.ended or stop.is_set():
            break
    if not stop.is_set():
        yield decoder.finish()


def _after_tokens(error: ProviderError, tokens: int, upstream: Upstream) -> ProviderError:
    """A failure once readers have tokens: final, since a retry would start the answer over."""
    return ProviderError(upstream.redact(f"{error} (after {tokens} tokens)"), code="provider_error")


def new_client(spec: ModelSpec) -> httpx.Client:
    """A client for one upstream.

    Without keep-alive each generation opens its own connection, so that a cancel can always reach it: a pooled
    connection waiting for its response headers could not be told apart from the others.
    """
    return httpx.Client(timeout=spec.timeout_s, limits=httpx.Limits(max_keepalive_connections=0))


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

"""The streaming HTTP plumbing the HTTP providers share.

``relay`` runs one streaming request: it maps failures to ``ProviderError`` (retryable only before the first
token) and shuts the connection down as soon as ``stop`` is set. An ``EventDecoder`` is the part each wire format
brings: events in, tokens out, then the ``Finish``.
"""

from __future__ import annotations

import contextlib
import email.utils
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import httpx
import orjson

from bridge import capabilities
from bridge.errors import ProviderError
from bridge.generation import GenerationRequest
from bridge.models import ModelSpec
from bridge.producer import Chunk, Delta, Finish
from tasks.providers.base import Provider
from tasks.providers.connections import ConnectionGuard, client_for, reads_within
from tasks.providers.sse import ServerSentEvent, iter_events

# Enough of an error body to quote its message.
MAX_ERROR_BODY_BYTES = 64 * 1024
MAX_ERROR_MESSAGE_CHARS = 500
# What may follow the end of an answer (the body's last chunk, usually received with it) for its connection to
# serve another generation; an upstream that sends more, or takes longer, loses the connection instead.
MAX_DRAIN_BYTES = 64 * 1024
DRAIN_S = 0.5


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


def _read_capped(body: Iterator[bytes]) -> bytes:
    received = bytearray()
    for chunk in body:
        received += chunk
        if len(received) >= MAX_ERROR_BODY_BYTES:
            break
    return bytes(received)


def _drain(body: Iterator[bytes]) -> None:
    """Read what follows the end of an answer, so that its connection goes back to the pool."""
    received = 0
    with reads_within(DRAIN_S), contextlib.suppress(httpx.HTTPError):
        for chunk in body:
            received += len(chunk)
            if received > MAX_DRAIN_BYTES:
                return


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
    Once ``stop`` is set the connection is shut down and the iterator ends without an error. After a whole
    answer, the connection goes back to its client's pool.
    """
    if stop.is_set():
        return
    tokens = 0
    with ConnectionGuard(stop) as guard:
        try:
            with guard.claiming():
                response = client.send(request, stream=True)
        except httpx.HTTPError as exc:
            if stop.is_set():
                return
            raise upstream.transport_error(exc) from exc
        guard.watch(response)
        body = response.iter_bytes()
        try:
            for chunk in _decode(response, body, stop, decoder, upstream):
                if isinstance(chunk, Finish):
                    guard.close()  # the answer is whole: a stop from now on is no cancel
                else:
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
            if decoder.ended:
                _drain(body)
            response.close()


def _decode(
    response: httpx.Response,
    body: Iterator[bytes],
    stop: threading.Event,
    decoder: EventDecoder,
    upstream: Upstream,
) -> Iterator[Chunk]:
    """What ``decoder`` makes of the events in ``body``, then its ``Finish``; nothing more once ``stop`` is set."""
    if not response.is_success:
        raise upstream.status_error(response, _read_capped(body))
    if response.headers.get("content-type", "").startswith("application/json"):
        # Not a stream: an error, or a server that ignored ``stream: true``.
        message = error_message(_read_capped(body))
        raise upstream.error(f"expected an event stream: {message}", retryable=False)
    for event in iter_events(body):
        yield from decoder.feed(event)
        if decoder.ended or stop.is_set():
            break
    if not stop.is_set():
        yield decoder.finish()


def _after_tokens(error: ProviderError, tokens: int, upstream: Upstream) -> ProviderError:
    """A failure once readers have tokens: final, since a retry would start the answer over."""
    return ProviderError(upstream.redact(f"{error} (after {tokens} tokens)"), code="provider_error")


class UpstreamProvider(Provider):
    """A provider that streams from an HTTP API at ``spec.base_url`` + ``endpoint``.

    It sends over its upstream's shared client (``client_for``); ``client`` replaces it, in tests, and must come from
    ``new_client`` for a cancel to reach a request that waits on a reused connection.
    """

    endpoint = ""

    def __init__(self, spec: ModelSpec, *, client: httpx.Client | None = None) -> None:
        if not spec.base_url:
            raise ValueError(f"model {spec.name!r} needs a base_url")
        self.spec = spec
        self._url = spec.base_url.rstrip("/") + self.endpoint
        self._client = client if client is not None else client_for(spec.base_url)

    def refuse_unsupported(self, request: GenerationRequest) -> None:
        """``provider_rejected`` for what the model cannot honour: refused (or dropped) at submission already, unless
        the registry changed since (bridge.capabilities)."""
        found = capabilities.problems(self.spec, request)
        if found:
            raise Upstream.of(self.spec).error("; ".join(f"{p.field}: {p.message}" for p in found), retryable=False)

    def post(self, body: dict[str, Any], headers: dict[str, str]) -> httpx.Request:
        """The streaming request to the endpoint, with the model's timeout and extra headers."""
        headers = {**headers, **self.spec.headers}
        return self._client.build_request("POST", self._url, json=body, headers=headers, timeout=self.spec.timeout_s)

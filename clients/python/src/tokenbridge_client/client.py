"""A Python client for the tokenbridge HTTP API, with SSE resume built in.

```python
with TokenbridgeClient("http://127.0.0.1:8000", api_key) as client:
    generation = client.submit("echo", "Hello there")
    print(collect_text(client.stream(generation)))
```

``stream`` follows a generation until its terminal event. When the connection drops, or a response ends
without a terminal event (the server's maximum stream duration, a deploy), it reconnects with
``Last-Event-ID`` and goes on with exactly the events after the last one it yielded.
"""

from __future__ import annotations

import random
import re
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx
import orjson

from ._errors import TokenbridgeError

# The contract's terminal events (bridge.events.TERMINAL_EVENTS; not imported, it pulls in pydantic).
TERMINAL_EVENTS = frozenset({"done", "error", "cancelled"})
# Statuses of an events request that are worth another try: rate limited, dependency or proxy down.
_RETRY_STATUSES = frozenset({429, 502, 503, 504})
# Answers to an ordinary request worth sending it again: a proxy or a dependency down for a moment.
_REQUEST_RETRY_STATUSES = frozenset({502, 503, 504})
# Failures after which no answer came back: a refused or dropped connection (also a pooled one the server
# closed just as it was reused), a timeout. Not a request the client itself could not send.
_REQUEST_RETRY_ERRORS = (httpx.NetworkError, httpx.TimeoutException, httpx.RemoteProtocolError)
_FIRST_REQUEST_RETRY_S = 0.25
_EOL = re.compile(rb"\r\n|\r|\n")


class TokenbridgeClientError(TokenbridgeError):
    """Raised when a request to a tokenbridge server fails."""


class TokenbridgeAPIError(TokenbridgeClientError):
    """Raised when the server answers with an error status; carries the contract's error fields."""

    def __init__(
        self, status: int, code: str, message: str, details: Any = None, *, retry_after_s: float | None = None
    ) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.details = details
        self.retry_after_s = retry_after_s


class TokenbridgeConnectionError(TokenbridgeClientError):
    """Raised when the server cannot be reached, or a stream cannot be resumed within the retries."""


class TokenbridgeProtocolError(TokenbridgeClientError):
    """Raised when the server sends what the contract rules out (event data that is not a JSON object)."""


class SseEventTooLarge(ValueError):
    """Raised by an ``SseParser`` given ``max_event_bytes`` when a line or an event is longer."""


@dataclass(frozen=True, slots=True)
class Event:
    """One event of a generation: its stream entry id, its name and its data."""

    id: str
    event: str
    data: dict[str, Any]

    @property
    def terminal(self) -> bool:
        return self.event in TERMINAL_EVENTS


@dataclass(frozen=True, slots=True)
class SseMessage:
    """One dispatched SSE event, before its data is decoded."""

    id: str
    event: str
    data: str


class SseParser:
    """Incremental parser of ``text/event-stream``, as the WHATWG HTML standard defines it.

    Lines end with CRLF, LF or CR (also when a CRLF is split between two chunks); ``data:`` lines are joined
    with LF; comments and unknown fields are skipped; an event without data is not dispatched but its ``id``
    still counts; an event left incomplete at the end of the body is discarded, unless the caller asks for it
    with ``finish``. Lines are split on bytes, not with ``str.splitlines``, which would also split JSON data on
    U+2028 and friends. ``max_event_bytes``: a longer line or event raises ``SseEventTooLarge`` (a reader of an
    untrusted server keeps its memory bounded).
    """

    def __init__(self, *, max_event_bytes: int | None = None) -> None:
        self.max_event_bytes = max_event_bytes
        self._size = 0
        self.last_event_id = ""
        self.retry_ms: int | None = None
        self._buffer = b""
        self._skip_lf = False
        self._first_line = True
        self._event = ""
        self._data: list[str] = []

    def feed(self, chunk: bytes) -> list[SseMessage]:
        """Parse the next bytes of the body; returns the events they complete."""
        if self._skip_lf and chunk:
            chunk = chunk.removeprefix(b"\n")
            self._skip_lf = False
        self._buffer += chunk
        messages: list[SseMessage] = []
        start = 0
        while match := _EOL.search(self._buffer, start):
            line = self._buffer[start : match.start()].decode("utf-8", errors="replace")
            start = match.end()
            # A CR that ends the chunk may be the first half of a CRLF.
            self._skip_lf = match.group() == b"\r" and start == len(self._buffer)
            message = self._line(line)
            if message is not None:
                messages.append(message)
        self._buffer = self._buffer[start:]
        if self.max_event_bytes is not None and len(self._buffer) > self.max_event_bytes:
            raise SseEventTooLarge(f"an SSE line longer than {self.max_event_bytes} bytes")
        return messages

    def finish(self) -> list[SseMessage]:
        """The end of the body, read leniently: a last line without its line end, and a last event without the
        blank line after it, still count (what an upstream that closes abruptly leaves)."""
        line = self._buffer.decode("utf-8", errors="replace")
        self._buffer = b""
        messages = [m for m in (self._line(line) if line else None, self._dispatch()) if m is not None]
        return messages

    def _line(self, line: str) -> SseMessage | None:
        if self._first_line:
            line = line.removeprefix("\ufeff")
            self._first_line = False
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            return None
        name, colon, value = line.partition(":")
        if colon:
            value = value.removeprefix(" ")
        if name == "data":
            self._size += len(value)
            if self.max_event_bytes is not None and self._size > self.max_event_bytes:
                raise SseEventTooLarge(f"an SSE event larger than {self.max_event_bytes} bytes")
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id" and "\0" not in value:
            self.last_event_id = value
        elif name == "retry" and value.isascii() and value.isdigit():
            self.retry_ms = int(value)
        return None

    def _dispatch(self) -> SseMessage | None:
        data, event = self._data, self._event or "message"
        self._data, self._event, self._size = [], "", 0
        if not data:
            return None
        return SseMessage(self.last_event_id, event, "\n".join(data))


@dataclass
class Transcript:
    """The text of a generation as its events build it: tokens append, ``restart`` discards, ``reset`` replaces."""

    text: str = ""

    def apply(self, event: Event) -> str:
        if event.event == "token":
            self.text += str(event.data.get("content", ""))
        elif event.event == "restart":
            self.text = ""
        elif event.event == "reset":
            self.text = str(event.data.get("text", ""))
        return self.text


def collect_text(events: Iterable[Event]) -> str:
    """The final text of a generation's events (what a reader shows once the stream has ended)."""
    transcript = Transcript()
    for event in events:
        transcript.apply(event)
    return transcript.text


class TokenbridgeClient:
    """Submit, read, cancel and follow generations of one tokenbridge server.

    ``timeout_s`` bounds each ordinary request. A stream that sends nothing, not even a keep-alive (the
    server sends one at least every 15 s), for ``stream_idle_timeout_s`` counts as dropped. A stream is
    resumed at most ``max_retries`` times in a row without a new event; waits start at the server's
    ``retry:`` (1 s) and double, up to ``max_backoff_s``, or longer when a 429/503 says ``Retry-After``.

    A request that cannot do anything twice (a read, a new stream token, a submission: each carries an
    ``Idempotency-Key``) is sent again, at most ``request_retries`` times, when no answer came back or the
    answer was 502, 503, 504 or 409 ``idempotency_key_in_use`` (see ``_Retries``).
    """

    def __init__(
        self,
        base_url: str,
        api_key: str | None,
        *,
        timeout_s: float = 30.0,
        stream_idle_timeout_s: float = 45.0,
        max_retries: int = 5,
        max_backoff_s: float = 30.0,
        request_retries: int = 2,
        http: httpx.Client | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        self.timeout_s = timeout_s
        self.stream_idle_timeout_s = stream_idle_timeout_s
        self.max_retries = max_retries
        self.max_backoff_s = max_backoff_s
        self.request_retries = request_retries
        self._http = http or httpx.Client()
        self._owns_http = http is None

    def __enter__(self) -> TokenbridgeClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        if self._owns_http:
            self._http.close()

    # -- requests ----------------------------------------------------------------------------------

    def submit(
        self,
        model: str,
        prompt: str | None = None,
        messages: list[dict[str, Any]] | None = None,
        *,
        idempotency_key: str | None = None,
        **fields: Any,
    ) -> dict[str, Any]:
        """``POST /v1/generations``; ``fields`` are the other body fields (``max_tokens``, ``options``, …).

        Without an ``idempotency_key`` a new random one is sent, so that a retry never starts a second generation.
        """
        body, headers = _submission(model, prompt, messages, idempotency_key, fields)
        return self._json(self._request("POST", "/v1/generations", json=body, headers=headers, repeatable=True))

    def get(self, generation_id: str) -> dict[str, Any]:
        """``GET /v1/generations/{id}``: status, usage and the text so far."""
        return self._json(self._request("GET", f"/v1/generations/{quote(generation_id, safe='')}"))

    def cancel(self, generation_id: str) -> dict[str, Any]:
        """``POST /v1/generations/{id}/cancel``; a finished generation raises a 409 ``already_finished``."""
        return self._json(self._request("POST", f"/v1/generations/{quote(generation_id, safe='')}/cancel"))

    def models(self) -> list[dict[str, Any]]:
        """``GET /v1/models``: the configured models as OpenAI model objects (``id``, ``owned_by``, ...)."""
        data = self._json(self._request("GET", "/v1/models")).get("data")
        return data if isinstance(data, list) else []

    def token(self, generation_id: str) -> dict[str, Any]:
        """``POST /v1/generations/{id}/token``: a fresh ``stream_token`` and its ``expires_at``."""
        path = f"/v1/generations/{quote(generation_id, safe='')}/token"
        return self._json(self._request("POST", path, repeatable=True))

    def session_token(self, session_id: str) -> dict[str, Any]:
        """``POST /v1/sessions/{id}/token``: a fresh ``stream_token`` for the session and its ``expires_at``."""
        return self._json(self._request("POST", f"/v1/sessions/{quote(session_id, safe='')}/token", repeatable=True))

    def session_generations(self, session_id: str, *, limit: int = 20) -> list[dict[str, Any]]:
        """``GET /v1/sessions/{id}/generations``: the session's generations, newest first."""
        path = f"/v1/sessions/{quote(session_id, safe='')}/generations?limit={limit}"
        data = self._json(self._request("GET", path)).get("data")
        return data if isinstance(data, list) else []

    def dead_letters(self, *, limit: int = 50) -> dict[str, Any]:
        """``GET /v1/dead-letters`` (admin scope): ``{"data": [...], "total": n}``, newest first."""
        return self._json(self._request("GET", f"/v1/dead-letters?limit={limit}"))

    def replay_dead_letter(self, dead_letter_id: str) -> dict[str, Any]:
        """``POST /v1/dead-letters/{id}/replay``: a held generation's entry is tried again."""
        return self._json(self._request("POST", f"/v1/dead-letters/{quote(dead_letter_id, safe='')}/replay"))

    def drop_dead_letter(self, dead_letter_id: str) -> dict[str, Any]:
        """``DELETE /v1/dead-letters/{id}``: gone; a held generation ends with ``poison_entry``."""
        return self._json(self._request("DELETE", f"/v1/dead-letters/{quote(dead_letter_id, safe='')}"))

    def status(self) -> dict[str, Any]:
        """``GET /readyz``: the health body, also when it is ``unhealthy`` (503)."""
        response = self._request("GET", "/readyz", check=False, repeatable=False)  # 503 is an answer here
        if response.status_code in (200, 503):
            try:
                body = response.json()
            except ValueError:
                body = None
            if isinstance(body, dict) and "status" in body:
                return body
        raise _api_error(response)

    def _request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        headers: dict[str, str] | None = None,
        check: bool = True,
        repeatable: bool | None = None,
    ) -> httpx.Response:
        """One request, sent again as ``_Retries`` allows (``repeatable`` defaults to: it is a GET)."""
        url = self.base_url + path
        retries = _Retries(url, method, repeatable, self.request_retries, self.max_backoff_s)
        all_headers = {**self._headers(), **(headers or {})}
        while True:
            try:
                response = self._http.request(method, url, json=json, headers=all_headers, timeout=self.timeout_s)
            except httpx.TransportError as exc:
                time.sleep(retries.after_error(exc))
                continue
            if (delay_s := retries.after_answer(response)) is None:
                break
            time.sleep(delay_s)
        if check and not response.is_success:
            raise _api_error(response)
        return response

    def _json(self, response: httpx.Response) -> dict[str, Any]:
        try:
            body = response.json()
        except ValueError as exc:
            raise TokenbridgeProtocolError(f"{response.url} answered {response.status_code} without JSON") from exc
        if not isinstance(body, dict):
            raise TokenbridgeProtocolError(f"{response.url} answered with JSON that is not an object")
        return body

    def _headers(self) -> dict[str, str]:
        headers = {"User-Agent": "tokenbridge-client"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        return headers

    # -- streams -----------------------------------------------------------------------------------

    def stream(
        self,
        generation_or_id: dict[str, Any] | str,
        *,
        last_event_id: str | None = None,
        refresh_token: Callable[[], str] | None = None,
    ) -> Iterator[Event]:
        """Events of a generation, from the start or after ``last_event_id``, until its terminal event.

        Takes the id or the body ``submit`` returned (whose ``stream_token`` is used when the client has no
        API key). Yields nothing when the generation had already ended at ``last_event_id`` (204).
        ``refresh_token`` returns a new stream token (from the backend that holds the API key, which asks
        ``token()``); it is called when a reconnect finds the token expired, and the stream resumes where it was.
        """
        if isinstance(generation_or_id, str):
            generation_id, token = generation_or_id, None
        else:
            generation_id, token = str(generation_or_id["id"]), generation_or_id.get("stream_token")
        url = f"{self.base_url}/v1/generations/{quote(generation_id, safe='')}/events"
        params = {"token": token} if token and not self.api_key else {}
        return self._follow(url, params, last_event_id, refresh_token if params else None)

    def _follow(
        self, url: str, params: dict[str, str], cursor: str | None, refresh_token: Callable[[], str] | None = None
    ) -> Iterator[Event]:
        follow = _Resumption(url, params, cursor, max_retries=self.max_retries, max_backoff_s=self.max_backoff_s)
        timeout = httpx.Timeout(self.timeout_s, read=self.stream_idle_timeout_s)
        while True:
            parser = SseParser()
            retry_after_s: float | None = None
            headers = follow.headers(self._headers())
            try:
                with self._http.stream("GET", url, params=follow.params, headers=headers, timeout=timeout) as response:
                    follow.answered = True
                    if response.status_code == 204:
                        return
                    if response.status_code != 200:
                        response.read()
                        error = _api_error(response)
                        if refresh_token is not None and follow.may_refresh(error):
                            follow.refresh(refresh_token())
                            continue
                        problem, retry_after_s = follow.retryable(error, response.status_code)
                    else:
                        for chunk in response.iter_bytes():
                            for event in follow.events(parser, chunk):
                                yield event
                                if event.terminal:
                                    return
                        problem = "the response ended before the generation did"
            except httpx.TransportError as exc:
                problem = follow.transport_problem(exc)
            time.sleep(follow.delay_s(problem, parser, retry_after_s))


class _Resumption:
    """Where a followed stream is and how it fared: the cursor it resumes from, its tries, its token refresh.

    Shared by the sync and the async client, which only differ in how they wait and read.
    """

    def __init__(
        self, url: str, params: dict[str, str], cursor: str | None, *, max_retries: int, max_backoff_s: float
    ) -> None:
        self.url = url
        self.params = params
        self.cursor = cursor
        self.max_retries = max_retries
        self.max_backoff_s = max_backoff_s
        self.retry_s = 1.0
        self.failures = 0
        self.answered = False  # whether the server was ever reached: a server that never was is reported at once
        self.refreshed = False  # a token refreshed since the last event: one that is refused again is not retried

    def headers(self, headers: dict[str, str]) -> dict[str, str]:
        if self.cursor:
            headers["Last-Event-ID"] = self.cursor
        return headers

    def may_refresh(self, error: TokenbridgeAPIError) -> bool:
        return error.code == "token_expired" and not self.refreshed

    def refresh(self, token: str) -> None:
        self.params = {**self.params, "token": token}
        self.refreshed = True

    def retryable(self, error: TokenbridgeAPIError, status: int) -> tuple[str, float | None]:
        """What to report of a refused request worth another try, and its ``Retry-After``; raises the others."""
        if status not in _RETRY_STATUSES:
            raise error
        return str(error), error.retry_after_s

    def events(self, parser: SseParser, chunk: bytes) -> Iterator[Event]:
        for message in parser.feed(chunk):
            event = _decode(message)
            self.cursor = event.id or self.cursor
            self.failures = 0
            self.refreshed = False
            yield event

    def transport_problem(self, exc: httpx.TransportError) -> str:
        if not self.answered and isinstance(exc, httpx.ConnectError):
            raise TokenbridgeConnectionError(f"cannot reach {self.url}: {_describe(exc)}") from exc
        return _describe(exc)

    def delay_s(self, problem: str, parser: SseParser, retry_after_s: float | None) -> float:
        """How long to wait before the next try; raises once the tries are used up."""
        if parser.retry_ms is not None:
            self.retry_s = parser.retry_ms / 1000
        self.failures += 1
        if self.failures > self.max_retries:
            raise TokenbridgeConnectionError(f"gave up on {self.url} after {self.failures} tries: {problem}")
        return backoff_s(self.retry_s, self.failures, self.max_backoff_s, retry_after_s)


class _Retries:
    """When an ordinary request (not a stream) is sent again; shared by the sync and the async client.

    Only a request that cannot do anything twice, only when no answer came back (``_REQUEST_RETRY_ERRORS``) or
    the answer was 502, 503, 504 or 409 ``idempotency_key_in_use``, at most ``retries`` times. Waits start at
    0.25 s and double, up to ``max_backoff_s``, or follow the answer's ``Retry-After``; an answer that asks for
    a longer wait than ``max_backoff_s`` is taken as it is (raised as a ``TokenbridgeAPIError`` with its
    ``retry_after_s``).
    """

    def __init__(self, url: str, method: str, repeatable: bool | None, retries: int, max_backoff_s: float) -> None:
        self.url = url
        self.left = retries if (method == "GET" if repeatable is None else repeatable) else 0
        self.max_backoff_s = max_backoff_s
        self.tries = 1

    def after_error(self, exc: httpx.TransportError) -> float:
        """The wait before the next try; raises ``TokenbridgeConnectionError`` when there is none."""
        if not self.left or not isinstance(exc, _REQUEST_RETRY_ERRORS):
            tries = f" (tried {self.tries} times)" if self.tries > 1 else ""
            raise TokenbridgeConnectionError(f"cannot reach {self.url}{tries}: {_describe(exc)}") from exc
        return self._next(None)

    def after_answer(self, response: httpx.Response) -> float | None:
        """The wait before the next try, or None to take this answer."""
        if not self.left or not _worth_another_try(response):
            return None
        retry_after = response.headers.get("Retry-After", "")
        retry_after_s = float(retry_after) if retry_after.isdigit() else None
        if retry_after_s is not None and retry_after_s > self.max_backoff_s:
            return None
        return self._next(retry_after_s)

    def _next(self, retry_after_s: float | None) -> float:
        self.left -= 1
        self.tries += 1
        return backoff_s(_FIRST_REQUEST_RETRY_S, self.tries - 1, self.max_backoff_s, retry_after_s)


def _worth_another_try(response: httpx.Response) -> bool:
    """502/503/504, or a submission whose Idempotency-Key another request is still using (409
    ``idempotency_key_in_use``: the earlier try, cut off before its answer, may still be storing it)."""
    if response.status_code == 409:
        return _api_error(response).code == "idempotency_key_in_use"
    return response.status_code in _REQUEST_RETRY_STATUSES


def _submission(
    model: str,
    prompt: str | None,
    messages: list[dict[str, Any]] | None,
    idempotency_key: str | None,
    fields: dict[str, Any],
) -> tuple[dict[str, Any], dict[str, str]]:
    """The body and headers of ``POST /v1/generations``: fields left at None are not sent (the server's
    defaults apply), and the ``Idempotency-Key`` is a new random one unless given."""
    body: dict[str, Any] = {"model": model}
    if prompt is not None:
        body["prompt"] = prompt
    if messages is not None:
        body["messages"] = messages
    body.update({name: value for name, value in fields.items() if value is not None})
    return body, {"Idempotency-Key": idempotency_key or uuid.uuid4().hex}


def backoff_s(retry_s: float, failures: int, max_backoff_s: float, retry_after_s: float | None) -> float:
    """How long to wait before the next try: doubling from ``retry_s``, or ``Retry-After``."""
    delay_s = min(max_backoff_s, retry_s * 2 ** (failures - 1))
    # A little jitter, so that the readers a deploy cut off do not all come back in the same instant.
    return float(max(delay_s * random.uniform(1.0, 1.1), retry_after_s or 0.0))


def _decode(message: SseMessage) -> Event:
    try:
        data = orjson.loads(message.data)
    except orjson.JSONDecodeError as exc:
        raise TokenbridgeProtocolError(f"event {message.id or '?'} has data that is not JSON") from exc
    if not isinstance(data, dict):
        raise TokenbridgeProtocolError(f"event {message.id or '?'} has data that is not a JSON object")
    return Event(message.id, message.event, data)


def _api_error(response: httpx.Response) -> TokenbridgeAPIError:
    """The contract's ``{"error": {"code", "message", "details"}}``, or what can be said of another body."""
    retry_after = response.headers.get("Retry-After", "")
    retry_after_s = float(retry_after) if retry_after.isdigit() else None
    try:
        body = response.json()
    except ValueError:
        body = None
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict) and isinstance(error.get("code"), str):
        message = str(error.get("message") or error["code"])
        return TokenbridgeAPIError(
            response.status_code, error["code"], message, error.get("details"), retry_after_s=retry_after_s
        )
    # Not the contract's body: a proxy's error page, or not tokenbridge at all.
    message = f"{response.reason_phrase or 'HTTP error'} from {response.url.copy_with(query=None)}"
    return TokenbridgeAPIError(response.status_code, "http_error", message, retry_after_s=retry_after_s)


def _describe(exc: httpx.TransportError) -> str:
    return str(exc) or type(exc).__name__

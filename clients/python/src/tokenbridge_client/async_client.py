"""The Python client on ``httpx.AsyncClient``: the same API as ``TokenbridgeClient``, awaited.

```python
async with AsyncTokenbridgeClient("http://127.0.0.1:8000", api_key) as client:
    generation = await client.submit("echo", "Hello there")
    print(await acollect_text(client.stream(generation)))
```

For async web frameworks (FastAPI, Starlette, aiohttp): nothing blocks the event loop, and a stream resumes
after a dropped connection exactly as the synchronous client's does.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable
from typing import Any
from urllib.parse import quote

import anyio
import httpx

from .client import (
    Event,
    SseParser,
    TokenbridgeProtocolError,
    Transcript,
    _api_error,
    _Resumption,
    _Retries,
    _submission,
)

# A new stream token, or an awaitable of one (a coroutine that asks your backend).
TokenRefresher = Callable[[], str | Awaitable[str]]


async def acollect_text(events: AsyncIterable[Event]) -> str:
    """The final text of a generation's events (what a reader shows once the stream has ended)."""
    transcript = Transcript()
    async for event in events:
        transcript.apply(event)
    return transcript.text


class AsyncTokenbridgeClient:
    """Submit, read, cancel and follow generations of one tokenbridge server, without blocking the loop.

    The tunables are ``TokenbridgeClient``'s. Pass ``http`` to share an ``httpx.AsyncClient`` (it is then
    not closed by ``aclose``).
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
        http: httpx.AsyncClient | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        self.timeout_s = timeout_s
        self.stream_idle_timeout_s = stream_idle_timeout_s
        self.max_retries = max_retries
        self.max_backoff_s = max_backoff_s
        self.request_retries = request_retries
        self._http = http or httpx.AsyncClient()
        self._owns_http = http is None

    async def __aenter__(self) -> AsyncTokenbridgeClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._owns_http:
            await self._http.aclose()

    # -- requests ----------------------------------------------------------------------------------

    async def submit(
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
        return _json(await self._request("POST", "/v1/generations", json=body, headers=headers, repeatable=True))

    async def get(self, generation_id: str) -> dict[str, Any]:
        """``GET /v1/generations/{id}``: status, usage and the text so far."""
        return _json(await self._request("GET", f"/v1/generations/{quote(generation_id, safe='')}"))

    async def cancel(self, generation_id: str) -> dict[str, Any]:
        """``POST /v1/generations/{id}/cancel``; a finished generation raises a 409 ``already_finished``."""
        return _json(await self._request("POST", f"/v1/generations/{quote(generation_id, safe='')}/cancel"))

    async def token(self, generation_id: str) -> dict[str, Any]:
        """``POST /v1/generations/{id}/token``: a fresh ``stream_token`` and its ``expires_at``."""
        path = f"/v1/generations/{quote(generation_id, safe='')}/token"
        return _json(await self._request("POST", path, repeatable=True))

    async def session_token(self, session_id: str) -> dict[str, Any]:
        """``POST /v1/sessions/{id}/token``: a fresh ``stream_token`` for the session and its ``expires_at``."""
        path = f"/v1/sessions/{quote(session_id, safe='')}/token"
        return _json(await self._request("POST", path, repeatable=True))

    async def session_generations(self, session_id: str, *, limit: int = 20) -> list[dict[str, Any]]:
        """``GET /v1/sessions/{id}/generations``: the session's generations, newest first."""
        path = f"/v1/sessions/{quote(session_id, safe='')}/generations?limit={limit}"
        data = _json(await self._request("GET", path)).get("data")
        return data if isinstance(data, list) else []

    async def status(self) -> dict[str, Any]:
        """``GET /readyz``: the health body, also when it is ``unhealthy`` (503)."""
        response = await self._request("GET", "/readyz", check=False, repeatable=False)  # 503 is an answer here
        if response.status_code in (200, 503):
            try:
                body = response.json()
            except ValueError:
                body = None
            if isinstance(body, dict) and "status" in body:
                return body
        raise _api_error(response)

    async def _request(
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
                response = await self._http.request(method, url, json=json, headers=all_headers, timeout=self.timeout_s)
            except httpx.TransportError as exc:
                await anyio.sleep(retries.after_error(exc))
                continue
            if (delay_s := retries.after_answer(response)) is None:
                break
            await anyio.sleep(delay_s)
        if check and not response.is_success:
            raise _api_error(response)
        return response

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
        refresh_token: TokenRefresher | None = None,
    ) -> AsyncIterator[Event]:
        """Events of a generation, from the start or after ``last_event_id``, until its terminal event.

        As ``TokenbridgeClient.stream``; ``refresh_token`` may also be a coroutine function.
        """
        if isinstance(generation_or_id, str):
            generation_id, token = generation_or_id, None
        else:
            generation_id, token = str(generation_or_id["id"]), generation_or_id.get("stream_token")
        url = f"{self.base_url}/v1/generations/{quote(generation_id, safe='')}/events"
        params = {"token": token} if token and not self.api_key else {}
        return self._follow(url, params, last_event_id, refresh_token if params else None)

    async def _follow(
        self, url: str, params: dict[str, str], cursor: str | None, refresh_token: TokenRefresher | None
    ) -> AsyncIterator[Event]:
        follow = _Resumption(url, params, cursor, max_retries=self.max_retries, max_backoff_s=self.max_backoff_s)
        timeout = httpx.Timeout(self.timeout_s, read=self.stream_idle_timeout_s)
        while True:
            parser = SseParser()
            retry_after_s: float | None = None
            headers = follow.headers(self._headers())
            try:
                async with self._http.stream(
                    "GET", url, params=follow.params, headers=headers, timeout=timeout
                ) as response:
                    follow.answered = True
                    if response.status_code == 204:
                        return
                    if response.status_code != 200:
                        await response.aread()
                        error = _api_error(response)
                        if refresh_token is not None and follow.may_refresh(error):
                            follow.refresh(await _call(refresh_token))
                            continue
                        problem, retry_after_s = follow.retryable(error, response.status_code)
                    else:
                        async for chunk in response.aiter_bytes():
                            for event in follow.events(parser, chunk):
                                yield event
                                if event.terminal:
                                    return
                        problem = "the response ended before the generation did"
            except httpx.TransportError as exc:
                problem = follow.transport_problem(exc)
            await anyio.sleep(follow.delay_s(problem, parser, retry_after_s))


async def _call(refresh_token: TokenRefresher) -> str:
    token = refresh_token()
    return token if isinstance(token, str) else await token


def _json(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError as exc:
        raise TokenbridgeProtocolError(f"{response.url} answered {response.status_code} without JSON") from exc
    if not isinstance(body, dict):
        raise TokenbridgeProtocolError(f"{response.url} answered with JSON that is not an object")
    return body

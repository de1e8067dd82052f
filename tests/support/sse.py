"""A small SSE client for tests: the client library's parser (the WHATWG rules, as a browser's EventSource),
keeping the comments too, so that a test can see the server's keep-alives."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson
from tokenbridge_client.client import SseMessage, SseParser


@dataclass
class SseEvent:
    id: str
    event: str
    data: dict[str, Any]


@dataclass
class SseResult:
    status: int
    headers: httpx.Headers
    events: list[SseEvent] = field(default_factory=list)
    comments: list[str] = field(default_factory=list)
    ended_by_server: bool = False


TERMINAL = {"done", "error", "cancelled"}


class _CommentKeepingParser(SseParser):
    def __init__(self, comments: list[str] | None) -> None:
        super().__init__()
        self.comments = comments

    def _line(self, line: str) -> SseMessage | None:
        if line.startswith(":") and self.comments is not None:
            self.comments.append(line[1:].strip())
        return super()._line(line)


def iter_messages(chunks: Iterable[bytes], comments: list[str] | None = None) -> Iterator[SseMessage]:
    """The events of an SSE body as they are dispatched, their data as text; comments go to ``comments``."""
    parser = _CommentKeepingParser(comments)
    for chunk in chunks:
        yield from parser.feed(chunk)


def iter_sse(chunks: Iterable[bytes], comments: list[str] | None = None) -> Iterator[SseEvent]:
    """The events of a tokenbridge SSE body, their JSON data decoded."""
    for message in iter_messages(chunks, comments):
        yield SseEvent(message.id, message.event, orjson.loads(message.data))


def read_sse(
    url: str,
    *,
    headers: dict[str, str] | None = None,
    params: dict[str, str] | None = None,
    max_events: int | None = None,
    stop_after_terminals: int | None = None,
    timeout_s: float = 30.0,
) -> SseResult:
    """Read events until the server ends the response, or until ``max_events`` / terminals have been read."""
    with (
        httpx.Client(timeout=httpx.Timeout(timeout_s)) as client,
        client.stream("GET", url, headers=headers, params=params) as response,
    ):
        result = SseResult(status=response.status_code, headers=response.headers)
        if response.status_code != 200:
            response.read()
            return result
        terminals = 0
        for event in iter_sse(response.iter_bytes(), result.comments):
            result.events.append(event)
            terminals += event.event in TERMINAL
            if max_events is not None and len(result.events) >= max_events:
                return result
            if stop_after_terminals is not None and terminals >= stop_after_terminals:
                return result
        result.ended_by_server = True
        return result

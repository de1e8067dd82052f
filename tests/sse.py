"""A small SSE client for tests: parses the wire format the way a browser's EventSource does."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson


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


def iter_sse(lines: Iterator[str], comments: list[str] | None = None) -> Iterator[SseEvent]:
    """Events of an SSE body, as EventSource parses them."""
    fields: dict[str, str] = {}
    data_lines: list[str] = []
    for line in lines:
        if line.startswith(":"):
            if comments is not None:
                comments.append(line[1:].strip())
            continue
        if line == "":
            if data_lines:
                yield SseEvent(
                    fields.get("id", ""), fields.get("event", "message"), orjson.loads("\n".join(data_lines))
                )
            fields, data_lines = {}, []
            continue
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "data":
            data_lines.append(value)
        else:
            fields[name] = value


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
        for event in iter_sse(response.iter_lines(), result.comments):
            result.events.append(event)
            terminals += event.event in TERMINAL
            if max_events is not None and len(result.events) >= max_events:
                return result
            if stop_after_terminals is not None and terminals >= stop_after_terminals:
                return result
        result.ended_by_server = True
        return result

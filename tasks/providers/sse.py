"""Server-sent events as an upstream LLM API sends them: parsed from network chunks, with a size cap."""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from bridge.errors import ProviderError

# A longer SSE line or event is a broken upstream, not a token.
MAX_EVENT_BYTES = 1 << 20

_LINE_END = re.compile(rb"\r\n|\r|\n")


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

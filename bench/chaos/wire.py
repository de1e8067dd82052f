"""The wire protocols of a reader, on asyncio: an SSE response and a WebSocket, each read with an idle timeout.

Light on purpose (no HTTP client library): hundreds of readers share one event loop in the chaos process,
which must not be the bottleneck of the stack it checks.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from tokenbridge_client import SseParser
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, CloseConnection, Ping, RejectConnection, Request, TextMessage


@dataclass(slots=True)
class WireEvent:
    id: str
    event: str
    data: dict[str, Any]


class EndedError(Exception):
    """Raised when a response or socket ends without a terminal event (the reader resumes)."""


class RefusedError(Exception):
    """Raised when the server answers a stream request with a status other than 200 (or 101)."""

    def __init__(self, status: int) -> None:
        super().__init__(f"status {status}")
        self.status = status


async def _open(host: str, port: int, connect_s: float) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.wait_for(asyncio.open_connection(host, port, limit=1 << 22), connect_s)


async def sse_events(
    host: str,
    port: int,
    path: str,
    headers: dict[str, str],
    *,
    last_id: str | None,
    cursor_in_query: bool,
    idle_s: float,
    connect_s: float = 10.0,
) -> AsyncGenerator[WireEvent, None]:
    """Events of one SSE response. Ends normally on 204 (nothing after the cursor); raises EndedError when the
    server closes the response, TimeoutError when nothing (not even a keep-alive) came for ``idle_s``."""
    head = dict(headers)
    if last_id is not None:
        if cursor_in_query:
            path += ("&" if "?" in path else "?") + f"last_event_id={quote(last_id)}"
        else:
            head["Last-Event-ID"] = last_id
    reader, writer = await _open(host, port, connect_s)
    try:
        lines = "".join(f"{k}: {v}\r\n" for k, v in head.items())
        writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nAccept: text/event-stream\r\n{lines}\r\n".encode())
        await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), connect_s + idle_s)
        parts = status_line.split()
        status = int(parts[1]) if len(parts) > 1 else 0
        chunked = False
        while (line := await asyncio.wait_for(reader.readline(), idle_s)) not in (b"\r\n", b"\n", b""):
            if line.lower().startswith(b"transfer-encoding:") and b"chunked" in line.lower():
                chunked = True
        if status == 204:
            return
        if status != 200:
            raise RefusedError(status)
        parser = SseParser()  # the client library's, as every SSE reader of this project
        async for data in _body(reader, chunked, idle_s):
            for message in parser.feed(data):
                yield WireEvent(message.id, message.event, json.loads(message.data))
        raise EndedError("response ended")
    finally:
        writer.close()


async def _body(reader: asyncio.StreamReader, chunked: bool, idle_s: float) -> AsyncIterator[bytes]:
    while True:
        if chunked:
            size_line = await asyncio.wait_for(reader.readline(), idle_s)
            if not size_line:
                return
            size = int(size_line.strip().split(b";")[0] or b"0", 16)
            if size == 0:
                return
            data = (await asyncio.wait_for(reader.readexactly(size + 2), idle_s))[:-2]
        else:
            data = await asyncio.wait_for(reader.read(65536), idle_s)
            if not data:
                return
        yield data


class WebSocket:
    """One client WebSocket on asyncio streams (wsproto does the framing)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.ws = WSConnection(ConnectionType.CLIENT)
        self.pending: list[str] = []
        self.partial = ""
        self.close_code: int | None = None

    @classmethod
    async def connect(
        cls, host: str, port: int, target: str, headers: dict[str, str], *, connect_s: float = 10.0
    ) -> WebSocket:
        reader, writer = await _open(host, port, connect_s)
        sock = cls(reader, writer)
        extra = [(k.encode(), v.encode()) for k, v in headers.items()]
        writer.write(sock.ws.send(Request(host=f"{host}:{port}", target=target, extra_headers=extra)))
        accepted = False
        while not accepted:
            for event in await sock._read(connect_s):
                if isinstance(event, RejectConnection):
                    sock.close()
                    raise RefusedError(event.status_code)
                accepted = accepted or isinstance(event, AcceptConnection)
        return sock

    async def _read(self, timeout_s: float) -> list[object]:
        data = await asyncio.wait_for(self.reader.read(65536), timeout_s)
        self.ws.receive_data(data or None)
        if not data and self.close_code is None:
            self.close_code = 1006  # closed without a close frame
        events: list[object] = list(self.ws.events())
        for event in events:
            if isinstance(event, TextMessage):
                self.partial += event.data
                if event.message_finished:
                    self.pending.append(self.partial)
                    self.partial = ""
            elif isinstance(event, Ping) and self.ws.state.name == "OPEN":
                self.writer.write(self.ws.send(event.response()))
            elif isinstance(event, CloseConnection):
                self.close_code = event.code
                if self.ws.state.name == "REMOTE_CLOSING":
                    self.writer.write(self.ws.send(event.response()))
        return events

    async def receive(self, idle_s: float) -> str | None:
        """The next text message; None once the socket closed (``close_code`` says how)."""
        while not self.pending and self.close_code is None:
            await self._read(idle_s)
        return self.pending.pop(0) if self.pending else None

    def send_text(self, text: str) -> None:
        self.writer.write(self.ws.send(TextMessage(data=text)))

    def close(self) -> None:
        self.writer.close()


async def ws_events(
    host: str, port: int, path: str, headers: dict[str, str], *, last_id: str | None, idle_s: float, sink: list[Any]
) -> AsyncGenerator[WireEvent, None]:
    """Events of one WebSocket. Ends normally on a close with 1000; raises EndedError on any other close.

    ``sink`` receives the open socket, so that the caller can send a cancel on it."""
    target = path + (f"?last_event_id={quote(last_id)}" if last_id is not None else "")
    sock = await WebSocket.connect(host, port, target, headers)
    sink.append(sock)
    try:
        while (message := await sock.receive(idle_s)) is not None:
            body: dict[str, Any] = json.loads(message)
            if "event" in body:
                yield WireEvent(body.get("id", ""), body["event"], body.get("data") or {})
        if sock.close_code != 1000:
            raise EndedError(f"closed with {sock.close_code}")
    finally:
        sink.remove(sock)
        sock.close()

"""The load process: many SSE readers on one asyncio loop, with a raw HTTP/1.1 client light enough not to be
the bottleneck. It timestamps every event on receipt and reports its own CPU time."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from tokenbridge.client import SseMessage, SseParser

TERMINAL = {"done", "error", "cancelled"}


@dataclass
class StreamResult:
    latencies_s: list[float] = field(default_factory=list)
    first_token_at: float | None = None
    tokens: int = 0
    gaps: int = 0
    duplicates: int = 0
    terminal: str | None = None
    error: str | None = None
    expected_seq: int = 0

    def record(self, message: SseMessage, received: float) -> None:
        """Count one event: its place in the sequence, and a token's latency (receipt - producer ts)."""
        body: dict[str, Any] = json.loads(message.data)
        seq = body.get("seq", self.expected_seq)
        if seq < self.expected_seq:
            self.duplicates += 1
            return
        self.gaps += seq - self.expected_seq
        self.expected_seq = seq + 1
        if message.event == "token" or (message.event == "message" and "content" in body):
            self.tokens += 1
            self.latencies_s.append(received - float(body["ts"]))
            if self.first_token_at is None:
                self.first_token_at = received
        elif message.event in TERMINAL:
            self.terminal = message.event


async def read_sse(
    host: str, port: int, path: str, headers: dict[str, str], result: StreamResult, *, timeout_s: float = 60
) -> None:
    """Read one SSE response to its terminal event, recording per-token latency (receipt - producer ts)."""
    try:
        await asyncio.wait_for(_read(host, port, path, headers, result), timeout_s)
    except (TimeoutError, OSError, ValueError, asyncio.IncompleteReadError) as exc:
        result.error = f"{type(exc).__name__}: {exc}"


async def _read(host: str, port: int, path: str, headers: dict[str, str], result: StreamResult) -> None:
    reader, writer = await asyncio.open_connection(host, port, limit=1 << 20)
    try:
        head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nAccept: text/event-stream\r\n{head}\r\n".encode())
        await writer.drain()
        parser = SseParser()
        async for data in _body(reader):
            received = time.time()
            for message in parser.feed(data):
                result.record(message, received)
                if result.terminal is not None:
                    return
    finally:
        writer.close()


async def _body(reader: asyncio.StreamReader) -> AsyncIterator[bytes]:
    """The body of a 200 response, chunk by chunk as it arrives (chunked, or until the server closes)."""
    status = await reader.readline()
    if b" 200 " not in status:
        raise ValueError(f"status {status!r}")
    chunked = False
    while (line := await reader.readline()) not in (b"\r\n", b"\n", b""):
        if line.lower().startswith(b"transfer-encoding:") and b"chunked" in line.lower():
            chunked = True
    while True:
        if chunked:
            size = int((await reader.readline()).strip() or b"0", 16)
            if size == 0:
                return
            yield (await reader.readexactly(size + 2))[:-2]
        else:
            data = await reader.read(65536)
            if not data:
                return
            yield data


async def hold_idle(
    host: str, port: int, path: str, headers: dict[str, str], opened: list[int], stop: asyncio.Event
) -> None:
    """Open an SSE stream that stays idle, and keep it open until ``stop``."""
    try:
        reader, writer = await asyncio.open_connection(host, port)
    except OSError:
        return
    try:
        head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n{head}\r\n".encode())
        await writer.drain()
        status = await asyncio.wait_for(reader.readline(), 30)
        if b" 200 " in status:
            opened.append(1)
            await stop.wait()
    except (OSError, TimeoutError):
        pass
    finally:
        writer.close()


def cpu_seconds() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime

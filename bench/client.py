"""The load process: many SSE readers on one asyncio loop, with a raw HTTP/1.1 client light enough not to be
the bottleneck. It timestamps every event on receipt and reports its own CPU time."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
from tokenbridge_client.client import SseMessage, SseParser

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
    # Every event recorded (tokens and others), when the submission was sent, how long it took to be accepted
    # (both when the reader posted it), and the close code of a WebSocket.
    events: int = 0
    posted_at: float | None = None
    post_s: float | None = None
    close_code: int | None = None
    # Of each token with a stream id: how long after its producer ts the worker wrote it to ``:raw`` (the id's
    # milliseconds; ``:out`` reuses it), so that a latency splits into the worker's part and the rest.
    written_s: list[float] = field(default_factory=list)
    # A WebSocket whose messages came compressed (the server accepted permessage-deflate).
    compressed: bool = False
    # When the reader's stream was answered (its status line came), and each token's latency counted from then
    # when it was written before: a token cannot reach a reader that is not there yet (Flask-SSE's publisher
    # waits for every reader before its first token; tokenbridge's answer starts when it is submitted).
    connected_at: float | None = None
    once_connected_s: list[float] = field(default_factory=list)

    def record(self, message: SseMessage, received: float) -> None:
        """Count one SSE event: its place in the sequence, and a token's latency (receipt - producer ts)."""
        body = json.loads(message.data)
        counted = len(self.latencies_s)
        self.record_event(message.event, body, received)
        if len(self.latencies_s) > counted and message.id:
            self.written_s.append(int(message.id.partition("-")[0]) / 1000 - float(body["ts"]))

    def record_event(self, event: str, body: dict[str, Any], received: float) -> None:
        """Count one event, whatever carried it (SSE, WebSocket)."""
        self.events += 1
        seq = body.get("seq", self.expected_seq)
        if seq < self.expected_seq:
            self.duplicates += 1
            return
        self.gaps += seq - self.expected_seq
        self.expected_seq = seq + 1
        if event == "token" or (event == "message" and "content" in body):
            self.tokens += 1
            self.latencies_s.append(received - float(body["ts"]))
            self.once_connected_s.append(received - max(float(body["ts"]), self.connected_at or 0.0))
            if self.first_token_at is None:
                self.first_token_at = received
        elif event in TERMINAL:
            self.terminal = event
            if event == "error":
                self.error = f"error event: {json.dumps(body.get('error', body))[:300]}"


async def submit(client: httpx.AsyncClient, body: dict[str, Any], result: StreamResult) -> dict[str, Any] | None:
    """POST one generation, noting when it was sent and how long it took; the created record, or None (with
    ``result.error``) when it was not accepted."""
    result.posted_at = time.time()
    try:
        response = await client.post("/v1/generations", json=body)
    except httpx.HTTPError as exc:
        result.error = f"POST {type(exc).__name__}: {exc}"
        return None
    result.post_s = time.time() - result.posted_at
    if response.status_code != 202:
        result.error = f"POST {response.status_code}: {response.text[:200]}"
        return None
    created: dict[str, Any] = response.json()
    return created


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
        async for data in _body(reader, result):
            received = time.time()
            for message in parser.feed(data):
                result.record(message, received)
                if result.terminal is not None:
                    return
    finally:
        writer.close()


async def _body(reader: asyncio.StreamReader, result: StreamResult) -> AsyncIterator[bytes]:
    """The body of a 200 response, chunk by chunk as it arrives (chunked, or until the server closes); when its
    status line came goes in ``result.connected_at``."""
    status = await reader.readline()
    if b" 200 " not in status:
        raise ValueError(f"status {status!r}")
    result.connected_at = time.time()
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


def raise_fd_limit() -> None:
    """As many open sockets as the system lets this process have (one per reader)."""
    import resource

    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def quantiles(values: list[float], *, scale: float = 1.0, digits: int = 3) -> dict[str, float | None]:
    """p50, p90, p99 and max of ``values`` times ``scale`` (None when there are none)."""
    ordered = sorted(values)

    def at(q: float) -> float | None:
        if not ordered:
            return None
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * scale, digits)

    return {name: at(q) for name, q in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("max", 1.0))}

"""The load process: many SSE readers on one asyncio loop, with a raw HTTP/1.1 client light enough not to be
the bottleneck. It timestamps every event on receipt and reports its own CPU time."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any

TERMINAL = {b"done", b"error", b"cancelled"}


@dataclass
class StreamResult:
    latencies_s: list[float] = field(default_factory=list)
    first_token_at: float | None = None
    tokens: int = 0
    gaps: int = 0
    duplicates: int = 0
    terminal: str | None = None
    error: str | None = None


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
        status = await reader.readline()
        if b" 200 " not in status:
            raise ValueError(f"status {status!r}")
        chunked = False
        while (line := await reader.readline()) not in (b"\r\n", b"\n", b""):
            if line.lower().startswith(b"transfer-encoding:") and b"chunked" in line.lower():
                chunked = True
        buffer = b""
        expected_seq = 0
        while True:
            if chunked:
                size = int((await reader.readline()).strip() or b"0", 16)
                if size == 0:
                    return
                data = (await reader.readexactly(size + 2))[:-2]
            else:
                data = await reader.read(65536)
                if not data:
                    return
            received = time.time()
            buffer += data
            while b"\n\n" in buffer:
                frame, buffer = buffer.split(b"\n\n", 1)
                event, payload = b"message", b""
                for line in frame.split(b"\n"):
                    if line.startswith(b"event:"):
                        event = line[6:].strip()
                    elif line.startswith(b"data:"):
                        payload = line[5:].strip()
                if not payload:
                    continue
                body: dict[str, Any] = json.loads(payload)
                seq = body.get("seq", expected_seq)
                if seq < expected_seq:
                    result.duplicates += 1
                    continue
                if seq > expected_seq:
                    result.gaps += seq - expected_seq
                expected_seq = seq + 1
                if event == b"token" or (event == b"message" and "content" in body):
                    result.tokens += 1
                    result.latencies_s.append(received - float(body["ts"]))
                    if result.first_token_at is None:
                        result.first_token_at = received
                elif event in TERMINAL:
                    result.terminal = event.decode()
                    return
    finally:
        writer.close()


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

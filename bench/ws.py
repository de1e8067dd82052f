"""WebSocket against SSE: what one web process spends per event delivered over each.

The WebSocket reader is a raw asyncio client (RFC 6455: a masked client frame, unmasked server frames), as
light as the SSE reader of ``bench.client``: each text frame is ``{"event", "id", "data"}``, and the server
closes with 1000 after the terminal event.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import struct
import time
import zlib
from typing import Any

import httpx

from bench.client import StreamResult, raise_fd_limit, read_sse, submit
from bench.profile import cpu_seconds, python_pid
from tests.support.stack import Stack

TEXT, CLOSE, PING, PONG, CONTINUATION = 0x1, 0x8, 0x9, 0xA, 0x0


def client_frame(opcode: int, payload: bytes, mask: bytes | None = None) -> bytes:
    """One final frame from a client: masked, as RFC 6455 requires of every client frame."""
    mask = mask if mask is not None else os.urandom(4)
    length = len(payload)
    if length < 126:
        head = struct.pack("!BB", 0x80 | opcode, 0x80 | length)
    elif length < 1 << 16:
        head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, length)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, length)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


async def read_frame(reader: asyncio.StreamReader) -> tuple[bool, int, bytes]:
    """(final, opcode, payload) of the next frame (unmasked if the sender masked it)."""
    final, opcode, payload, _ = await read_frame_compressed(reader)
    return final, opcode, payload


async def read_frame_compressed(reader: asyncio.StreamReader) -> tuple[bool, int, bytes, bool]:
    """``read_frame`` and whether the frame says its message is compressed (RSV1, permessage-deflate)."""
    first, second = await reader.readexactly(2)
    length = second & 0x7F
    if length == 126:
        (length,) = struct.unpack("!H", await reader.readexactly(2))
    elif length == 127:
        (length,) = struct.unpack("!Q", await reader.readexactly(8))
    mask = await reader.readexactly(4) if second & 0x80 else None
    payload = await reader.readexactly(length)
    if mask is not None:
        payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return bool(first & 0x80), first & 0x0F, payload, bool(first & 0x40)


async def _handshake(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host: str, path: str, headers: dict[str, str]
) -> None:
    key = base64.b64encode(os.urandom(16)).decode()
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    # What a browser offers: permessage-deflate (the server may accept it or not; both are read).
    writer.write(
        f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
        f"Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n{head}\r\n".encode()
    )
    await writer.drain()
    status = await reader.readline()
    if b" 101 " not in status:
        raise ValueError(f"status {status!r}")
    while (await reader.readline()) not in (b"\r\n", b"\n", b""):
        pass


async def _read(host: str, port: int, path: str, headers: dict[str, str], result: StreamResult) -> None:
    reader, writer = await asyncio.open_connection(host, port, limit=1 << 20)
    try:
        await _handshake(reader, writer, host, path, headers)
        parts: list[bytes] = []
        inflate = zlib.decompressobj(-15)
        compressed = False
        while True:
            final, opcode, payload, rsv1 = await read_frame_compressed(reader)
            if opcode in (TEXT, CONTINUATION):
                compressed = compressed or (opcode == TEXT and rsv1)
                parts.append(payload)
                if final:
                    data = b"".join(parts)
                    if compressed:
                        data = inflate.decompress(data + b"\x00\x00\xff\xff")
                        result.compressed = True
                    message: dict[str, Any] = json.loads(data)
                    parts.clear()
                    compressed = False
                    if "event" in message:
                        result.record_event(message["event"], message.get("data") or {}, time.time())
            elif opcode == PING:
                writer.write(client_frame(PONG, payload))
            elif opcode == CLOSE:
                result.close_code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
                writer.write(client_frame(CLOSE, payload[:2]))
                await writer.drain()
                return
    finally:
        writer.close()


async def read_ws(
    host: str, port: int, path: str, headers: dict[str, str], result: StreamResult, *, timeout_s: float = 60
) -> None:
    """Read one generation's WebSocket to its close, recording every event like ``read_sse`` does."""
    try:
        await asyncio.wait_for(_read(host, port, path, headers, result), timeout_s)
    except (TimeoutError, OSError, ValueError, asyncio.IncompleteReadError) as exc:
        result.error = f"{type(exc).__name__}: {exc}"


async def _run(stack: Stack, web_pid: int, transport: str, readers: int, tokens: int, rate: float) -> dict[str, Any]:
    """``readers`` generations, each read by one client over ``transport``; the web CPU from the moment every
    reader has its first event (so the POSTs and the connections are left out) to the last one's end."""
    body = {"model": "synthetic", "prompt": "ws", "max_tokens": tokens, "options": {"tokens_per_second": rate}}
    results = [StreamResult() for _ in range(readers)]
    semaphore = asyncio.Semaphore(50)
    read = read_ws if transport == "ws" else read_sse

    async def one(client: httpx.AsyncClient, result: StreamResult) -> None:
        async with semaphore:
            created = await submit(client, body, result)
        if created is not None:
            path = created["ws_url"] if transport == "ws" else created["events_url"]
            await read("127.0.0.1", stack.web_ports[0], path, stack.headers, result)

    async with httpx.AsyncClient(base_url=stack.base_url, headers=stack.headers, timeout=60) as client:
        tasks = [asyncio.create_task(one(client, result)) for result in results]
        while not all(r.events or r.error for r in results) and not all(t.done() for t in tasks):
            await asyncio.sleep(0.01)
        cpu_before, events_before, started = cpu_seconds(web_pid), sum(r.events for r in results), time.monotonic()
        await asyncio.gather(*tasks)
        cpu, events = cpu_seconds(web_pid) - cpu_before, sum(r.events for r in results) - events_before
    return {
        "events": sum(r.events for r in results),
        "measured_events": events,
        "measured_s": round(time.monotonic() - started, 2),
        "web_cpu_s": round(cpu, 3),
        "web_cpu_us_per_event": round(cpu * 1e6 / events, 1) if events else None,
        "done": sum(1 for r in results if r.terminal == "done"),
        "gaps": sum(r.gaps for r in results),
        "duplicates": sum(r.duplicates for r in results),
        "close_codes": sorted({r.close_code for r in results if r.close_code is not None}),
        # The client offers permessage-deflate, as browsers do: whether the server compressed its messages.
        "compressed": sum(1 for r in results if r.compressed),
        "errors": [r.error for r in results if r.error][:5],
    }


# The order of the rounds: each transport as often first as last, so that a host whose speed drifts over the part
# (a shared machine's does) weighs on both alike.
ROUNDS = ("sse", "ws", "ws", "sse")


def web_cpu_per_event(stack: Stack, readers: int, tokens: int, *, rate: float = 20.0) -> dict[str, Any]:
    """The same load read over SSE and over WebSocket, in alternating rounds: web CPU (its gunicorn worker, children
    included) per delivered event over all the rounds of each transport, and their ratio."""
    raise_fd_limit()
    web_pid = python_pid(stack.processes["web"].pid, "gunicorn")
    out: dict[str, Any] = {"readers": readers, "tokens": tokens, "rate": rate, "rounds": len(ROUNDS) // 2}
    runs: dict[str, list[dict[str, Any]]] = {"sse": [], "ws": []}
    for transport in ROUNDS:
        runs[transport].append(asyncio.run(_run(stack, web_pid, transport, readers, tokens, rate)))
    for transport, measured in runs.items():
        out[transport] = pooled(measured)
    sse, ws = out["sse"]["web_cpu_us_per_event"], out["ws"]["web_cpu_us_per_event"]
    out["ws_over_sse"] = round(ws / sse, 2) if sse and ws else None
    return out


def pooled(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The rounds of one transport as one: counts added up, CPU per event over all of them, each round's too."""
    events = sum(r["measured_events"] for r in runs)
    cpu_s = sum(r["web_cpu_s"] for r in runs)
    return {
        "events": sum(r["events"] for r in runs),
        "measured_events": events,
        "measured_s": round(sum(r["measured_s"] for r in runs), 2),
        "web_cpu_s": round(cpu_s, 3),
        "web_cpu_us_per_event": round(cpu_s * 1e6 / events, 1) if events else None,
        "each_round_us_per_event": [r["web_cpu_us_per_event"] for r in runs],
        "done": min(r["done"] for r in runs),
        "gaps": sum(r["gaps"] for r in runs),
        "duplicates": sum(r["duplicates"] for r in runs),
        "close_codes": sorted({code for r in runs for code in r["close_codes"]}),
        "compressed": min(r["compressed"] for r in runs),
        "errors": [error for r in runs for error in r["errors"]][:5],
    }

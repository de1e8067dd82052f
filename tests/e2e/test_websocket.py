"""The WebSocket endpoint: same events as SSE, resume, cancel, close 1000 after the terminal event."""

from __future__ import annotations

import time
from typing import Any

import httpx
import orjson
import pytest

from tests.support.stack import API_KEY, Stack
from tests.support.ws_client import Client, ConnectionClosed

pytestmark = pytest.mark.e2e


def _ws_url(stack: Stack, path: str) -> str:
    return stack.url(path).replace("http://", "ws://", 1)


def _read_all(ws: Any, timeout_s: float = 20) -> tuple[list[dict[str, Any]], int | None]:
    frames: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            message = ws.receive(timeout=1)
            if message is not None:
                frames.append(orjson.loads(message))
    except ConnectionClosed as closed:
        return frames, closed.reason
    raise AssertionError("the server did not close the WebSocket")


def test_websocket_gives_the_same_events_as_sse_and_closes_with_1000(stack: Stack) -> None:
    gen = stack.create(model="echo", prompt="over the socket we go")
    ws = Client.connect(_ws_url(stack, gen["ws_url"]), headers={"Authorization": f"Bearer {API_KEY}"})
    frames, code = _read_all(ws)
    assert code == 1000
    assert "".join(f["data"]["content"] for f in frames if f["event"] == "token") == "over the socket we go"
    assert frames[-1]["event"] == "done"
    sse = stack.events(gen).events
    assert [(f["id"], f["event"], f["data"]) for f in frames] == [(e.id, e.event, e.data) for e in sse]


def test_websocket_resumes_from_last_event_id_with_a_stream_token(stack: Stack) -> None:
    gen = stack.create(model="echo", prompt="one two three four five")
    everything = stack.events(gen).events
    url = _ws_url(stack, gen["ws_url"]) + f"?token={gen['stream_token']}&last_event_id={everything[1].id}"
    frames, code = _read_all(Client.connect(url))
    assert code == 1000
    assert [f["id"] for f in frames] == [e.id for e in everything[2:]]


def test_websocket_cancel_message_cancels_the_generation(stack: Stack) -> None:
    gen = stack.create(model="echo", prompt=" ".join(["slow"] * 100), options={"delay_ms": 100})
    ws = Client.connect(_ws_url(stack, gen["ws_url"]), headers={"Authorization": f"Bearer {API_KEY}"})
    first = orjson.loads(ws.receive(timeout=10))
    assert first["event"] == "token"
    ws.send(orjson.dumps({"type": "cancel"}).decode())
    frames, code = _read_all(ws)
    assert code == 1000
    assert frames[-1]["event"] == "cancelled"
    assert stack.get(f"/v1/generations/{gen['id']}").json()["status"] == "cancelled"


def test_websocket_answers_a_bad_message_without_closing(stack: Stack) -> None:
    gen = stack.create(model="echo", prompt="a b c d e f", options={"delay_ms": 100})
    ws = Client.connect(_ws_url(stack, gen["ws_url"]), headers={"Authorization": f"Bearer {API_KEY}"})
    ws.send("not json")
    frames, code = _read_all(ws)
    assert code == 1000
    assert {"type": "error", "error": {"code": "bad_message", "message": 'Send {"type": "cancel"}.'}} in frames
    assert frames[-1]["event"] == "done"


@pytest.mark.parametrize("fragments", [1, 7], ids=["one-frame", "fragmented"])
def test_a_message_over_the_limit_gets_close_code_1009_with_a_reason(stack: Stack, fragments: int) -> None:
    # Given a reader of a generation that is still running
    gen = stack.create(model="external", prompt="x")
    ws = Client.connect(_ws_url(stack, gen["ws_url"]), headers={"Authorization": f"Bearer {API_KEY}"})
    # When it sends a message of 70,000 bytes (over the 64 KiB limit), in one frame or in several
    for index in range(fragments):
        ws.send("a" * (70_000 // fragments), finished=index == fragments - 1)
    # Then the server closes with 1009 and says why, and the client reads the close frame (no reset)
    frames, code = _read_all(ws)
    assert (code, ws.close_message) == (1009, "Message is too big")
    assert frames == []


def test_a_message_at_the_limit_is_read(stack: Stack) -> None:
    gen = stack.create(model="echo", prompt="a b c d e f", options={"delay_ms": 100})
    ws = Client.connect(_ws_url(stack, gen["ws_url"]), headers={"Authorization": f"Bearer {API_KEY}"})
    ws.send(" " * (64 * 1024 - 2) + "{}")  # 64 KiB: read, and answered as any message that is not a command
    frames, code = _read_all(ws)
    assert code == 1000
    assert {"type": "error", "error": {"code": "bad_message", "message": 'Send {"type": "cancel"}.'}} in frames


def _handshake(stack: Stack, path: str, headers: dict[str, str] | None = None) -> httpx.Response:
    upgrade = {
        "Connection": "Upgrade",
        "Upgrade": "websocket",
        "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
    }
    return httpx.get(stack.url(path), headers={**upgrade, **(headers or {})}, timeout=10)


def test_websocket_refuses_before_the_upgrade_with_a_json_error(stack: Stack) -> None:
    gen = stack.create(model="echo", prompt="x")
    refused = _handshake(stack, gen["ws_url"])
    assert refused.status_code == 401
    assert refused.json()["error"]["code"] == "missing_credentials"
    unknown = _handshake(stack, "/v1/generations/gen_nothing/ws", {"Authorization": f"Bearer {API_KEY}"})
    assert unknown.status_code == 404
    assert unknown.json()["error"]["code"] == "not_found"
    accepted = _handshake(stack, gen["ws_url"] + f"?token={gen['stream_token']}")
    assert accepted.status_code == 101

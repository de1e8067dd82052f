"""The Durable Streams read path over HTTP, against the Procfile processes: a generation and a session read by
catch-up, long-poll and SSE, resumed from saved offsets, closed at the end."""

from __future__ import annotations

import time
from typing import Any

import httpx
import orjson
import pytest

from tests.support.sse import iter_messages
from tests.support.stack import Stack

pytestmark = pytest.mark.e2e

PROMPT = "Durable streams carry every token of this answer, in order, once."


def _path(gen: dict[str, Any]) -> str:
    return f"/v1/stream/generations/{gen['id']}"


def _text(messages: list[dict[str, Any]]) -> str:
    return "".join(m["data"]["content"] for m in messages if m["event"] == "token")


def _finished(stack: Stack, **body: Any) -> dict[str, Any]:
    gen = stack.create(model="echo", prompt=PROMPT, **body)
    assert stack.events(gen).ended_by_server
    return gen


def test_a_finished_generation_reads_whole_as_a_closed_json_stream_of_its_events(stack: Stack) -> None:
    gen = _finished(stack)
    # When a Durable Streams client reads it from the start
    first = stack.get(_path(gen), params={"offset": "-1"})
    # Then it gets every event as a JSON message, the stream closed and up to date
    assert first.status_code == 200 and first.headers["content-type"] == "application/json"
    messages = first.json()
    assert _text(messages) == PROMPT
    assert [m["data"]["seq"] for m in messages] == list(range(len(messages)))
    assert messages[-1]["event"] == "done"
    assert first.headers["stream-closed"] == "true" and first.headers["stream-up-to-date"] == "true"
    assert first.headers["x-content-type-options"] == "nosniff"
    assert first.headers["cross-origin-resource-policy"] == "cross-origin"
    # And the offset it was given is the last event's, and reading from it is the end of the stream (EOF)
    offset = first.headers["stream-next-offset"]
    eof = stack.get(_path(gen), params={"offset": offset})
    assert eof.status_code == 200 and eof.json() == []
    assert eof.headers["stream-closed"] == "true" and eof.headers["stream-next-offset"] == offset
    # And no offset at all reads the same as -1
    assert stack.get(_path(gen)).json() == messages


def test_long_polls_follow_a_running_generation_to_its_end_exactly(stack: Stack) -> None:
    # Given a generation that is still producing
    gen = stack.create(model="echo", prompt=PROMPT, options={"delay_ms": 40})
    # When a client long-polls it from the start, each time from the offset it was given
    messages: list[dict[str, Any]] = []
    saved: list[tuple[str, int]] = []  # each offset given, with how many events the client had then
    offset, closed = "-1", False
    deadline = time.monotonic() + 30
    while not closed and time.monotonic() < deadline:
        answer = stack.get(_path(gen), params={"offset": offset, "live": "long-poll"})
        assert answer.status_code in (200, 204) and answer.headers["stream-cursor"].isdigit()
        if answer.status_code == 200:
            messages += answer.json()
        offset = answer.headers["stream-next-offset"]
        saved.append((offset, len(messages)))
        closed = answer.headers.get("stream-closed") == "true"
    # Then it got the whole answer, once, in more than one poll, and the stream closed at `done`
    assert closed and _text(messages) == PROMPT and messages[-1]["event"] == "done"
    assert [m["data"]["seq"] for m in messages] == list(range(len(messages)))
    assert len({count for _, count in saved}) > 2
    # And the offsets sort as the stream does, and a catch-up from any saved one gets exactly the rest
    assert [o for o, _ in saved] == sorted(o for o, _ in saved)
    for saved_offset, count in saved:
        assert stack.get(_path(gen), params={"offset": saved_offset}).json() == messages[count:]
    # And a long-poll at the end of the closed stream answers 204 at once
    started = time.monotonic()
    end = stack.get(_path(gen), params={"offset": offset, "live": "long-poll"})
    assert end.status_code == 204 and end.headers["stream-closed"] == "true"
    assert time.monotonic() - started < 1.0


def test_sse_mode_sends_data_and_control_events_and_closes_after_the_last(stack: Stack) -> None:
    gen = stack.create(model="echo", prompt=PROMPT, options={"delay_ms": 20})
    with (
        httpx.Client(timeout=30) as client,
        client.stream(
            "GET", stack.url(_path(gen)), params={"offset": "-1", "live": "sse"}, headers=stack.headers
        ) as response,
    ):
        assert response.status_code == 200
        assert response.headers["content-type"] == "text/event-stream"
        assert "no-cache" in response.headers["cache-control"]
        events = list(iter_messages(response.iter_bytes()))
    data = [message for event in events if event.event == "data" for message in orjson.loads(event.data)]
    controls = [orjson.loads(event.data) for event in events if event.event == "control"]
    # Every data event is followed by a control event; the last says the stream is closed, with no cursor
    assert [event.event for event in events][-1] == "control"
    assert _text(data) == PROMPT and data[-1]["event"] == "done"
    assert controls[-1]["streamClosed"] is True and "streamCursor" not in controls[-1]
    assert all("streamCursor" in control for control in controls[:-1])
    offsets = [control["streamNextOffset"] for control in controls]
    assert offsets == sorted(offsets)


def test_offset_now_skips_what_is_there_and_head_tells_the_tail_and_closure(stack: Stack) -> None:
    gen = _finished(stack)
    whole = stack.get(_path(gen))
    now = stack.get(_path(gen), params={"offset": "now"})
    assert now.status_code == 200 and now.json() == [] and now.headers["cache-control"] == "no-store"
    assert now.headers["stream-next-offset"] == whole.headers["stream-next-offset"]
    assert now.headers["stream-closed"] == "true"
    head = httpx.head(stack.url(_path(gen)), headers=stack.headers, timeout=10)
    assert head.status_code == 200 and head.headers["stream-closed"] == "true"
    assert head.headers["stream-next-offset"] == whole.headers["stream-next-offset"]
    assert head.headers["cache-control"] == "no-store"


def test_a_repeated_catch_up_with_its_etag_gets_304(stack: Stack) -> None:
    gen = _finished(stack)
    first = stack.get(_path(gen), params={"offset": "-1"})
    again = stack.get(_path(gen), params={"offset": "-1"}, headers={"If-None-Match": first.headers["etag"]})
    assert again.status_code == 304 and again.content == b""
    other = stack.get(_path(gen), params={"offset": "-1"}, headers={"If-None-Match": '"something-else"'})
    assert other.status_code == 200


@pytest.mark.parametrize(
    ("params", "code"),
    [
        ({"offset": "12,3"}, "invalid_offset"),
        ({"offset": ""}, "invalid_offset"),
        ({"offset": "1700000000000-1"}, "invalid_offset"),
        ({"live": "long-poll"}, "invalid_offset"),
        ({"offset": "-1", "live": "websocket"}, "invalid_live"),
    ],
)
def test_a_bad_read_gets_400_naming_what_is_wrong(stack: Stack, params: dict[str, str], code: str) -> None:
    gen = _finished(stack)
    answer = stack.get(_path(gen), params=params)
    assert answer.status_code == 400 and answer.json()["error"]["code"] == code
    assert answer.headers["x-content-type-options"] == "nosniff"


def test_two_offsets_get_400_and_an_unknown_generation_404(stack: Stack) -> None:
    gen = _finished(stack)
    two = httpx.get(f"{stack.url(_path(gen))}?offset=-1&offset=now", headers=stack.headers, timeout=10)
    assert two.status_code == 400 and two.json()["error"]["code"] == "invalid_offset"
    missing = stack.get("/v1/stream/generations/gen_000000000000000000000000")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"


def test_a_session_reads_as_an_open_stream_and_an_idle_long_poll_answers_204_with_a_cursor(stack: Stack) -> None:
    # Given a session with one finished generation
    gen = _finished(stack, session_id=f"ds-{time.time_ns()}")
    path = f"/v1/stream/sessions/{gen['session_id']}"
    whole = stack.get(path, params={"offset": "-1"})
    # Then its stream holds the generation's events and stays open (a session gets more generations)
    assert whole.status_code == 200 and _text(whole.json()) == PROMPT
    assert "stream-closed" not in whole.headers and whole.headers["stream-up-to-date"] == "true"
    # When a client long-polls its tail and nothing comes (DURABLE_STREAMS_LONG_POLL_S is 1 s on this stack)
    idle = stack.get(path, params={"offset": whole.headers["stream-next-offset"], "live": "long-poll"})
    # Then it gets 204, up to date, with the same offset and a cursor
    assert idle.status_code == 204 and idle.headers["stream-up-to-date"] == "true"
    assert idle.headers["stream-next-offset"] == whole.headers["stream-next-offset"]
    cursor = idle.headers["stream-cursor"]
    # And a poll that echoes a cursor not behind the current one gets a greater one
    again = stack.get(path, params={"offset": "now", "live": "long-poll", "cursor": cursor})
    assert again.status_code == 204 and int(again.headers["stream-cursor"]) > int(cursor)
    # And a second generation in the session wakes a long-poll of its tail
    tail = whole.headers["stream-next-offset"]
    stack.create(model="echo", prompt="more", session_id=gen["session_id"])
    more: list[dict[str, Any]] = []
    deadline = time.monotonic() + 20
    while not any(m["event"] == "done" for m in more) and time.monotonic() < deadline:
        answer = stack.get(path, params={"offset": tail, "live": "long-poll"})
        if answer.status_code == 200:
            more += answer.json()
        tail = answer.headers["stream-next-offset"]
    assert _text(more) == "more"


def test_a_generation_stream_is_not_created_or_deleted_and_only_an_external_one_appended_to(stack: Stack) -> None:
    gen = _finished(stack)
    for method in ("PUT", "DELETE"):
        answer = httpx.request(method, stack.url(_path(gen)), headers=stack.headers, content=b"[1]", timeout=10)
        assert answer.status_code == 405 and answer.json()["error"]["code"] == "method_not_allowed", method
    # An append is for external generations only
    answer = httpx.post(
        stack.url(_path(gen)), headers={**stack.headers, "Content-Type": "application/json"}, content=b'"x"'
    )
    assert answer.status_code == 409 and answer.json()["error"]["code"] == "not_external"

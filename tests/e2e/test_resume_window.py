"""What a finished generation holds, and what a reader gets once its events are no longer kept (REDIS_RESUME_WINDOW_MS).

A token is kept once for readers (``:out``) while the resume window lasts; the raw stream goes with the end. After
the window, a reader gets a ``reset`` with the whole text, then the terminal event, as they were sent.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from bridge import keys
from tests.support import wait_for
from tests.support.procfile import ROOT
from tests.support.stack import Stack, running_stack

pytestmark = [pytest.mark.e2e]

WINDOW_MS = 1500
WORDS = "kept once then only as text "


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running_stack(
        tmp_path_factory.mktemp("window-redis"),
        ROOT / "test-artifacts" / "window-logs",
        REDIS_RESUME_WINDOW_MS=str(WINDOW_MS),
    ) as stack:
        yield stack


def _finished(stack: Stack, **body: object) -> tuple[dict[str, object], list[tuple[str, str, dict[str, object]]]]:
    generation = stack.create(model="echo", prompt=WORDS, **body)
    events = [(e.id, e.event, e.data) for e in stack.events(generation).events]
    assert events[-1][1] == "done"
    return generation, events


def _order(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq)


def _gone(stack: Stack, generation_id: str) -> None:
    with stack.client() as client:
        wait_for(lambda: not client.exists(keys.gen_out(generation_id)), timeout_s=WINDOW_MS / 1000 + 5)


def test_a_finished_generation_keeps_its_events_once_and_no_raw_stream(stack: Stack) -> None:
    generation, events = _finished(stack)
    gid = str(generation["id"])
    with stack.client() as client:
        assert not client.exists(keys.gen_raw(gid))
        assert client.xlen(keys.gen_out(gid)) == len(events)
        assert 0 < client.pttl(keys.gen_out(gid)) <= WINDOW_MS
        assert client.pttl(keys.gen_meta(gid)) > WINDOW_MS and client.get(keys.gen_text(gid)) == WORDS


def test_after_the_window_a_reader_gets_a_reset_with_the_whole_text_then_the_terminal_event(stack: Stack) -> None:
    # Given a finished generation whose resume window has passed
    generation, events = _finished(stack)
    gid = str(generation["id"])
    _gone(stack, gid)
    terminal_id, _, terminal = events[-1]
    # When readers come without a cursor, and with one in the middle of the answer
    for params in ({}, {"last_event_id": events[1][0]}):
        got = stack.events(generation, params=params).events
        # Then each gets the reset with the whole text, then the terminal event as first sent, and the response ends
        assert [(e.event, e.data) for e in got] == [
            ("reset", {"reason": "cursor_trimmed", "text": WORDS, "next_seq": terminal["seq"]}),
            ("done", terminal),
        ]
        assert got[-1].id == terminal_id and _order(got[0].id) < _order(terminal_id)
    # And a reader that already has the terminal event is told there is nothing more (204)
    assert stack.get(str(generation["events_url"]), params={"last_event_id": terminal_id}).status_code == 204
    # And the record is whole
    record = stack.get(f"/v1/generations/{gid}").json()
    assert (record["status"], record["text"]) == ("completed", WORDS)


def test_after_the_window_a_failed_generation_gives_its_error_as_sent(stack: Stack) -> None:
    # Given a generation that failed after two tokens, whose resume window has passed
    generation = stack.create(
        model="synthetic", prompt="fail", max_tokens=5, options={"fail_after_tokens": 2, "tokens_per_second": 1000}
    )
    events = [(e.id, e.event, e.data) for e in stack.events(generation).events]
    assert events[-1][1] == "error"
    _gone(stack, str(generation["id"]))
    text = "".join(str(data["content"]) for _, event, data in events if event == "token")
    # When a reader comes without a cursor
    got = stack.events(generation).events
    # Then it gets the reset with the text, then the error exactly as first sent
    assert [(e.event, e.data) for e in got] == [
        ("reset", {"reason": "cursor_trimmed", "text": text, "next_seq": events[-1][2]["seq"]}),
        ("error", events[-1][2]),
    ]
    assert got[-1].id == events[-1][0]


def test_a_session_reader_after_a_generations_window_gets_its_reset_and_the_others_whole(stack: Stack) -> None:
    # Given a session whose first generation's window passed while a second, slower one ran (it keeps the session)
    first, _ = _finished(stack, session_id="window-session")
    second = stack.create(model="echo", prompt=WORDS, session_id="window-session", options={"delay_ms": 500})
    _gone(stack, str(first["id"]))
    second_events = stack.events(second).events
    assert second_events[-1].event == "done"
    # When a reader reads the session from its start
    got = stack.events({"events_url": "/v1/sessions/window-session/events"}, max_events=len(second_events) + 2)
    # Then the first generation comes as a reset with its whole text and its terminal event, the second whole
    of_first = [(e.event, e.data.get("text")) for e in got.events if e.data["generation_id"] == first["id"]]
    assert of_first == [("reset", WORDS), ("done", None)]
    of_second = [e.data["seq"] for e in got.events if e.data["generation_id"] == second["id"]]
    assert of_second == [e.data["seq"] for e in second_events]


def test_after_the_window_a_durable_streams_read_from_the_start_gets_the_reset_and_an_old_offset_gets_410(
    stack: Stack,
) -> None:
    # Given a finished generation whose resume window has passed
    generation, events = _finished(stack)
    gid = str(generation["id"])
    _gone(stack, gid)
    path = f"/v1/stream/generations/{gid}"
    # When a Durable Streams client reads it from the start
    whole = stack.get(path, params={"offset": "-1"})
    # Then it gets the reset with the whole text and the terminal event, and the stream is closed
    assert [(m["event"], m["data"]) for m in whole.json()] == [
        ("reset", {"reason": "cursor_trimmed", "text": WORDS, "next_seq": events[-1][2]["seq"]}),
        ("done", events[-1][2]),
    ]
    assert whole.headers["stream-closed"] == "true"
    # And its end offset reads as the end; an offset from the middle of the answer is gone (410)
    assert stack.get(path, params={"offset": whole.headers["stream-next-offset"]}).json() == []
    ms, _, seq = events[1][0].partition("-")
    old = stack.get(path, params={"offset": f"{int(ms):016d}_{int(seq):020d}"})
    assert old.status_code == 410 and old.json()["error"]["code"] == "offset_gone"

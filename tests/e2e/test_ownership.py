"""Ownership, scopes and stream tokens: what one API key may see and do with another's generations and sessions."""

from __future__ import annotations

import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support import holds_for, wait_for
from tests.support.sse import read_sse
from tests.support.stack import ADMIN_KEY, API_KEY_OWNER, BUDGET_KEY, OTHER_KEY, PRODUCER_KEY, READER_KEY, Stack

pytestmark = pytest.mark.e2e


def _as(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _routes(gen: dict[str, Any]) -> list[tuple[str, str, Any]]:
    """Every route that names a generation or its session: (method, path, body)."""
    gid, sid = gen["id"], gen["session_id"]
    return [
        ("GET", f"/v1/generations/{gid}", None),
        ("POST", f"/v1/generations/{gid}/cancel", None),
        ("GET", f"/v1/generations/{gid}/events", None),
        ("GET", f"/v1/generations/{gid}/ws", None),
        ("POST", f"/v1/generations/{gid}/token", None),
        ("POST", f"/v1/generations/{gid}/tokens", {"index": 0, "tokens": ["x"]}),
        ("POST", f"/v1/generations/{gid}/complete", {"finish_reason": "stop"}),
        ("GET", f"/v1/sessions/{sid}/events", None),
        ("GET", f"/v1/stream/generations/{gid}", None),
        ("GET", f"/v1/stream/sessions/{sid}", None),
        ("GET", f"/v1/sessions/{sid}/generations", None),
        ("POST", f"/v1/sessions/{sid}/token", None),
    ]


_UPGRADE = {
    "Connection": "Upgrade",
    "Upgrade": "websocket",
    "Sec-WebSocket-Version": "13",
    "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
}


def _call(stack: Stack, method: str, path: str, body: Any, key: str) -> httpx.Response:
    headers = {**_as(key), **(_UPGRADE if path.endswith("/ws") else {})}
    return httpx.request(method, stack.url(path), json=body, headers=headers, timeout=10)


def test_another_key_gets_404_for_a_generation_and_its_session_on_every_route(stack: Stack) -> None:
    # Given an external generation (it takes every route, feeding included) of one key
    gen = stack.create(model="external", prompt="secret plans")
    # When another key tries every route that names it or its session
    answers = {path: _call(stack, method, path, body, OTHER_KEY) for method, path, body in _routes(gen)}
    # Then each answer is the one an unknown id gets
    seen = {path: (r.status_code, r.json()["error"]["code"]) for path, r in answers.items()}
    assert seen == dict.fromkeys(answers, (404, "not_found"))
    # And it cannot start a generation in that session either
    intruder = stack.post(
        "/v1/generations", {"model": "echo", "prompt": "x", "session_id": gen["session_id"]}, headers=_as(OTHER_KEY)
    )
    assert intruder.status_code == 404
    # While the owner still can do everything, and finds nothing the other key did
    assert (
        stack.post(f"/v1/generations/{gen['id']}/tokens", {"index": 0, "tokens": ["secret ", "plans"]}).status_code
        == 202
    )
    assert stack.post(f"/v1/generations/{gen['id']}/complete", {"finish_reason": "stop"}).status_code == 202
    events = stack.events(gen).events
    assert [e.event for e in events] == ["token", "token", "done"]
    listed = stack.get(f"/v1/sessions/{gen['session_id']}/generations").json()["data"]
    assert [g["id"] for g in listed] == [gen["id"]]


def test_an_admin_key_sees_every_owners_generations(stack: Stack) -> None:
    gen = stack.create(model="echo", prompt="for the record")
    read_sse(stack.url(gen["events_url"]), headers=stack.headers)
    record = stack.get(f"/v1/generations/{gen['id']}", headers=_as(ADMIN_KEY)).json()
    assert record["text"] == "for the record"
    session = stack.get(f"/v1/sessions/{gen['session_id']}/generations", headers=_as(ADMIN_KEY))
    assert [g["id"] for g in session.json()["data"]] == [gen["id"]]


def test_a_reader_key_reads_its_owners_generations_and_may_do_nothing_else(stack: Stack) -> None:
    gen = stack.create(model="echo", prompt="read only")
    # It reads the owner's generation, its events and its session, and mints stream tokens
    assert read_sse(stack.url(gen["events_url"]), headers=_as(READER_KEY)).events[-1].event == "done"
    assert stack.get(f"/v1/generations/{gen['id']}", headers=_as(READER_KEY)).json()["text"] == "read only"
    assert stack.post(f"/v1/generations/{gen['id']}/token", headers=_as(READER_KEY)).status_code == 200
    # But it may not create, cancel or feed
    refused = [
        stack.post("/v1/generations", {"model": "echo", "prompt": "x"}, headers=_as(READER_KEY)),
        stack.post(f"/v1/generations/{gen['id']}/cancel", headers=_as(READER_KEY)),
        stack.post(f"/v1/generations/{gen['id']}/tokens", {"index": 0, "tokens": ["x"]}, headers=_as(READER_KEY)),
    ]
    assert [(r.status_code, r.json()["error"]["code"]) for r in refused] == [(403, "insufficient_scope")] * 3


def test_a_producer_key_feeds_its_owners_external_generations_only(stack: Stack) -> None:
    # Given an external generation of the app's key, and one of another key
    ours = stack.create(model="external", prompt="fed")
    theirs = stack.post("/v1/generations", {"model": "external", "prompt": "x"}, headers=_as(OTHER_KEY)).json()
    # When the producer key feeds ours, it goes through
    fed = stack.post(f"/v1/generations/{ours['id']}/tokens", {"index": 0, "tokens": ["hi"]}, headers=_as(PRODUCER_KEY))
    assert fed.status_code == 202
    done = stack.post(f"/v1/generations/{ours['id']}/complete", {"finish_reason": "stop"}, headers=_as(PRODUCER_KEY))
    assert done.status_code == 202
    assert [e.data.get("content") for e in stack.events(ours).events] == ["hi", None]
    # But another owner's generation does not exist for it, and it may do nothing but feed
    other = stack.post(
        f"/v1/generations/{theirs['id']}/tokens", {"index": 0, "tokens": ["x"]}, headers=_as(PRODUCER_KEY)
    )
    assert other.status_code == 404
    for response in (
        stack.get(f"/v1/generations/{ours['id']}", headers=_as(PRODUCER_KEY)),
        stack.post("/v1/generations", {"model": "external", "prompt": "x"}, headers=_as(PRODUCER_KEY)),
    ):
        assert (response.status_code, response.json()["error"]["code"]) == (403, "insufficient_scope")


def test_a_fresh_stream_token_reads_what_the_first_one_read(stack: Stack) -> None:
    # Given a generation and its session
    gen = stack.create(model="echo", prompt="again and again")
    # When the key asks for new stream tokens
    started = time.time()
    fresh = stack.post(f"/v1/generations/{gen['id']}/token")
    session = stack.post(f"/v1/sessions/{gen['session_id']}/token")
    # Then they come with their expiry, and read like the tokens of the creation
    assert fresh.status_code == session.status_code == 200
    body = fresh.json()
    assert set(body) == {"stream_token", "expires_at"}
    assert started + 3600 - 5 <= body["expires_at"] <= time.time() + 3600 + 1
    read = read_sse(stack.url(gen["events_url"]), params={"token": body["stream_token"]})
    assert "".join(e.data.get("content", "") for e in read.events) == "again and again"
    watched = read_sse(
        stack.url(gen["session_events_url"]), params={"token": session.json()["stream_token"]}, max_events=1
    )
    assert watched.status == 200
    # And a stream token cannot mint another one (that needs the API key)
    again = httpx.post(stack.url(f"/v1/generations/{gen['id']}/token"), params={"token": gen["stream_token"]})
    assert (again.status_code, again.json()["error"]["code"]) == (403, "forbidden")


def test_a_fresh_stream_token_only_reads_while_the_first_one_also_cancels(stack: Stack) -> None:
    # Given a running generation and a token minted for it (a refresh)
    gen = stack.create(model="external", prompt="stop me")
    fresh = stack.post(f"/v1/generations/{gen['id']}/token").json()["stream_token"]
    # When a browser holding only the fresh token cancels it
    refused = httpx.post(stack.url(f"/v1/generations/{gen['id']}/cancel"), params={"token": fresh})
    # Then it is refused (the contract: a fresh read-only token), and the generation goes on
    assert (refused.status_code, refused.json()["error"]["code"]) == (403, "forbidden")
    assert stack.get(f"/v1/generations/{gen['id']}").json()["status"] != "cancelled"
    # And the token of the creation cancels it
    cancelled = httpx.post(stack.url(f"/v1/generations/{gen['id']}/cancel"), params={"token": gen["stream_token"]})
    assert cancelled.status_code == 202
    wait_for(lambda: stack.get(f"/v1/generations/{gen['id']}").json()["status"] == "cancelled", interval_s=0.1)


def test_a_reloaded_page_finds_the_generations_of_its_session_newest_first(stack: Stack) -> None:
    # Given three generations in one session, the last one still running
    first = stack.create(model="echo", prompt="one")
    session = first["session_id"]
    second = stack.create(model="echo", prompt="two", session_id=session)
    third = stack.create(model="external", prompt="three", session_id=session)
    read_sse(stack.url(second["events_url"]), headers=stack.headers)
    # When the page asks for the session's generations
    listing = stack.get(f"/v1/sessions/{session}/generations")
    # Then it gets them newest first, with their status, and finds the running one to resume
    assert listing.status_code == 200
    data = listing.json()["data"]
    assert [g["id"] for g in data] == [third["id"], second["id"], first["id"]]
    assert data[0]["status"] == "queued" and data[1]["status"] == "completed" and data[1]["text"] == "two"
    # And pages through them
    page = stack.get(f"/v1/sessions/{session}/generations", params={"limit": 2}).json()
    assert [g["id"] for g in page["data"]] == [third["id"], second["id"]] and page["has_more"] is True
    bad = stack.get(f"/v1/sessions/{session}/generations", params={"limit": 0})
    assert (bad.status_code, bad.json()["error"]["code"]) == (422, "validation_failed")
    assert stack.get("/v1/sessions/no-such-session/generations").status_code == 404


def test_keys_rotate_through_the_keys_file_without_a_restart(stack: Stack) -> None:
    # Given the keys file every web process reads
    keys_file = Path(stack.env["API_KEYS_FILE"])
    original = keys_file.read_text()
    gen = stack.create(model="echo", prompt="rotated")
    new_key = "e2e-rotated-key-0001"
    try:
        # When a new key for the same owner is added to it
        keys_file.write_text(
            original + f'\n[[keys]]\nname = "app-next"\nkey = "{new_key}"\nowner = "{API_KEY_OWNER}"\n'
        )
        # Then every web process accepts it within a few seconds, and it sees the owner's generations
        _wait_for_status(stack, f"/v1/generations/{gen['id']}", new_key, 200)
        # And once it is removed again, it is refused
        keys_file.write_text(original)
        _wait_for_status(stack, f"/v1/generations/{gen['id']}", new_key, 401)
    finally:
        keys_file.write_text(original)
    # And a file that cannot be read keeps the keys that were working
    try:
        keys_file.write_text("[[keys]\nbroken")
        holds_for(
            lambda: stack.get(f"/v1/generations/{gen['id']}", headers=_as(READER_KEY)).status_code == 200,
            window_s=2.5,
            why="each web process looks at the keys file again every second (KEYS_FILE_CHECK_S): both read it by then",
        )
    finally:
        keys_file.write_text(original)


def _wait_for_status(stack: Stack, path: str, key: str, status: int, timeout_s: float = 10) -> None:
    # Several answers in a row, so that every web process (two per stack) has seen the change.
    streak = [0]

    def six_in_a_row() -> bool:
        answer = httpx.get(stack.url(path), headers=_as(key), timeout=10).status_code
        streak[0] = streak[0] + 1 if answer == status else 0
        return streak[0] >= 6

    wait_for(
        six_in_a_row,
        timeout_s=timeout_s,
        interval_s=0.1,
        message=f"{path} did not answer {status} with the rotated key",
    )


def test_the_record_counts_the_readers_watching_on_every_web_process(stack: Stack) -> None:
    # Given a slow generation and two readers of it (on whichever web processes they land) and a session reader
    gen = stack.create(model="echo", prompt="one two three four five six", options={"delay_ms": 400})
    path = f"/v1/generations/{gen['id']}"
    with ExitStack() as readers:
        for url in (gen["events_url"], gen["events_url"], gen["session_events_url"]):
            readers.enter_context(httpx.stream("GET", stack.url(url), headers=stack.headers, timeout=30))
        # Then the record, the session listing and the statistics count them
        wait_for(lambda: stack.get(path).json()["readers"] == 2)
        listed = stack.get(f"/v1/sessions/{gen['session_id']}/generations").json()["data"]
        assert listed[0]["readers"] == 2
        # (each web process publishes on its own clock: the session reader may be counted a moment later)
        wait_for(lambda: _all_watched(stack.get("/v1/stats").json()["readers"]))
    # And once they leave, they are no longer counted
    wait_for(lambda: stack.get(path).json()["readers"] == 0)


def test_a_key_past_its_token_budget_is_stopped_and_refused_until_the_window_frees(stack: Stack) -> None:
    # Not in the last seconds of a minute: the budget's window must not roll over mid-test
    wait_for(lambda: time.time() % 60 <= 50, timeout_s=15, interval_s=1)
    budgeted = {"Authorization": f"Bearer {BUDGET_KEY}"}
    # Given a key allowed 10 tokens a minute, and an answer of 40 tokens
    words = " ".join(f"w{i}" for i in range(40))
    gen = stack.post(
        "/v1/generations", {"model": "echo", "prompt": words, "options": {"delay_ms": 20}}, headers=budgeted
    )
    assert gen.status_code == 202
    # When it streams past the budget
    events = read_sse(stack.url(gen.json()["events_url"]), headers=budgeted).events
    # Then it ends with rate_limited, not far past the budget
    assert events[-1].event == "error" and events[-1].data["code"] == "rate_limited"
    produced = sum(1 for e in events if e.event == "token")
    assert 10 <= produced < 40
    # And new generations of the key are refused until the minute is over; its usage is in /v1/stats
    refused = stack.post("/v1/generations", {"model": "echo", "prompt": "x"}, headers=budgeted)
    assert (refused.status_code, refused.json()["error"]["code"]) == (429, "token_budget_exceeded")
    assert 1 <= int(refused.headers["Retry-After"]) <= 61
    usage = stack.get("/v1/stats", headers=budgeted).json()["usage"]
    assert usage["api_key"] == "budgeted" and usage["tokens_per_minute"] == 10
    # (the consumer adds its last count just after the terminal event it committed)
    wait_for(lambda: stack.get("/v1/stats", headers=budgeted).json()["usage"]["tokens_this_minute"] >= produced)
    # Other keys are not affected
    assert stack.post("/v1/generations", {"model": "echo", "prompt": "x"}).status_code == 202


def _all_watched(readers: dict[str, int]) -> bool:
    return readers["total"] >= 3 and readers["generations"] >= 1 and readers["sessions"] >= 1

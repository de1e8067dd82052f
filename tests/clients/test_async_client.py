"""AsyncTokenbridgeClient against the real stack: the synchronous client's API, awaited."""

from __future__ import annotations

import functools
import uuid
from collections.abc import Callable, Coroutine
from typing import Any

import pytest
from tokenbridge_client.async_client import AsyncTokenbridgeClient, acollect_text
from tokenbridge_client.client import TokenbridgeAPIError, TokenbridgeConnectionError

from bridge.embedded import free_port
from tests.browser.support import expired_token
from tests.support import run_in_own_loop
from tests.support.scripted_server import ScriptedServer, hang_up, status
from tests.support.stack import API_KEY, Stack

pytestmark = pytest.mark.e2e

PROMPT = "Tokens travel from the model to every reader, in order and in real time."


def in_own_loop(test: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    """Run an async test with ``asyncio.run`` in a thread of its own: the browser tests' Playwright keeps an event
    loop running in the main thread for the whole session, where no second one may run."""

    @functools.wraps(test)
    def run(*args: Any, **kwargs: Any) -> None:
        run_in_own_loop(test(*args, **kwargs))

    return run


@in_own_loop
async def test_an_answer_streams_whole_and_its_record_agrees(stack: Stack) -> None:
    async with AsyncTokenbridgeClient(stack.base_url, API_KEY) as client:
        # Given a submitted generation
        created = await client.submit("echo", PROMPT, options={"delay_ms": 5})
        # When it is read to its end
        events = [event async for event in client.stream(created)]
        # Then every token arrived in order, the stream ended with done, and the record says the same
        assert [event.data["seq"] for event in events] == list(range(len(events)))
        assert events[-1].event == "done"
        assert await acollect_text(client.stream(created["id"])) == PROMPT
        record = await client.get(created["id"])
        assert (record["status"], record["text"]) == ("completed", PROMPT)


@in_own_loop
async def test_a_stream_resumes_after_the_last_event_it_had(stack: Stack) -> None:
    async with AsyncTokenbridgeClient(stack.base_url, API_KEY) as client:
        created = await client.submit("echo", PROMPT, options={"delay_ms": 5})
        # Given a reader that stopped after three events
        first = []
        async for event in client.stream(created):
            first.append(event)
            if len(first) == 3:
                break
        # When it reads again after the last of them
        rest = [event async for event in client.stream(created, last_event_id=first[-1].id)]
        # Then it gets exactly the events that followed: no gap, no duplicate
        seqs = [event.data["seq"] for event in first + rest]
        assert seqs == list(range(len(seqs)))
        assert "".join(event.data.get("content", "") for event in first + rest) == PROMPT


@in_own_loop
async def test_an_expired_stream_token_is_refreshed_by_a_coroutine(stack: Stack) -> None:
    async with (
        AsyncTokenbridgeClient(stack.base_url, API_KEY) as backend,
        AsyncTokenbridgeClient(stack.base_url, None) as browser_like,
    ):
        # Given a generation and a reader that holds only an expired stream token for it
        created = await backend.submit("echo", PROMPT)
        stale = {**created, "stream_token": expired_token(stack, created["id"])}
        calls = []

        async def refresh() -> str:
            calls.append(1)
            return str((await backend.token(created["id"]))["stream_token"])

        # When it reads, with the backend minting a fresh token
        text = await acollect_text(browser_like.stream(stale, refresh_token=refresh))
        # Then the token was refreshed once and the answer arrived whole
        assert (text, len(calls)) == (PROMPT, 1)


@in_own_loop
async def test_a_cancelled_generation_ends_with_cancelled_and_cannot_be_cancelled_again(stack: Stack) -> None:
    async with AsyncTokenbridgeClient(stack.base_url, API_KEY) as client:
        created = await client.submit("echo", PROMPT, options={"delay_ms": 300})
        async for event in client.stream(created):
            if event.event == "token":
                await client.cancel(created["id"])
        assert event.event == "cancelled"
        with pytest.raises(TokenbridgeAPIError) as refused:
            await client.cancel(created["id"])
        assert refused.value.status == 409


@in_own_loop
async def test_a_session_lists_its_generations_newest_first(stack: Stack) -> None:
    session = f"s-{uuid.uuid4().hex}"
    async with AsyncTokenbridgeClient(stack.base_url, API_KEY) as client:
        first = await client.submit("echo", "one", session_id=session)
        second = await client.submit("echo", "two", session_id=session)
        listed = await client.session_generations(session)
        assert [generation["id"] for generation in listed] == [second["id"], first["id"]]
        assert (await client.session_token(session))["stream_token"]


@in_own_loop
async def test_errors_are_the_clients_exceptions(stack: Stack) -> None:
    async with AsyncTokenbridgeClient(stack.base_url, API_KEY) as client:
        with pytest.raises(TokenbridgeAPIError) as unknown:
            await client.get("gen_does_not_exist")
        assert (unknown.value.status, unknown.value.code) == (404, "not_found")
        assert (await client.status())["status"] in ("healthy", "degraded")
    async with AsyncTokenbridgeClient(f"http://127.0.0.1:{free_port()}", API_KEY) as nowhere:
        with pytest.raises(TokenbridgeConnectionError):
            await nowhere.submit("echo", "hello")
        with pytest.raises(TokenbridgeConnectionError):
            await acollect_text(nowhere.stream("gen_x"))


@in_own_loop
async def test_a_submission_that_got_no_answer_is_sent_again_with_the_same_idempotency_key() -> None:
    created = {"id": "gen_1", "status": "queued"}
    # Given a server that drops the first connection before answering
    with ScriptedServer(hang_up, status(202, created)) as server:
        async with AsyncTokenbridgeClient(server.url, "k", timeout_s=5) as client:
            # When a generation is submitted
            answer = await client.submit("echo", "Hello")
    # Then it was sent again with the same key, and the second answer is returned
    assert answer == created
    first, second = server.requests
    assert first.headers["idempotency-key"] == second.headers["idempotency-key"]

"""A generation lost whole (a failover to a replica that never had it): its readers are told, not left waiting."""

from __future__ import annotations

import time

import httpx
import pytest

from bridge import keys
from bridge.connections import close
from tests.support import wait_for
from tests.support.sse import iter_messages
from tests.support.stack import Stack

pytestmark = pytest.mark.e2e


def test_a_reader_of_a_generation_that_is_gone_is_ended_and_its_resume_gets_404(stack: Stack) -> None:
    # Given a reader attached to a slow generation, which has had a token
    gen = stack.create(model="echo", prompt=" ".join(["slow"] * 200), options={"delay_ms": 100})
    started = time.monotonic()
    seen: list[str] = []
    with httpx.stream("GET", stack.url(gen["events_url"]), headers=stack.headers, timeout=30) as response:
        assert response.status_code == 200
        for message in iter_messages(response.iter_bytes()):
            if message.event == "token" and not seen:
                # When Redis loses the generation whole, as a promoted replica that never had it would
                _lose_whole(stack, gen["id"])
            if message.event:
                seen.append(message.event)
    ended_after = time.monotonic() - started

    # Then its stream ends soon (within a few keep-alives, not at STREAM_MAX_DURATION_S), with no terminal event
    assert ended_after < 20, ended_after
    assert not {"done", "error", "cancelled"} & set(seen)
    # And resuming it says it is gone
    assert stack.get(gen["events_url"]).status_code == 404


def _lose_whole(stack: Stack, generation_id: str) -> None:
    client = stack.client()
    names = [keys.gen_meta(generation_id), keys.gen_raw(generation_id), keys.gen_out(generation_id)]
    names += [keys.gen_text(generation_id), keys.gen_lease(generation_id)]
    # Until a pass finds nothing left to delete: a commit in flight at one pass may write some of them again.
    wait_for(lambda: sum(client.delete(name) for name in names) == 0, interval_s=0.2)
    close(client)

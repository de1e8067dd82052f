"""Reader counts across web processes: live, summed, and gone when a process stops publishing."""

from __future__ import annotations

import redis

from app.presence import STALE_INTERVALS, Presence
from tests.support import wait_for

INTERVAL_S = 0.1


def test_readers_are_summed_over_processes_and_drop_when_they_leave(r: redis.Redis) -> None:
    # Given two web processes, each with readers of one generation, and one with a session reader
    first, second = Presence(r, INTERVAL_S), Presence(r, INTERVAL_S)
    with first.watching(generation_id="gen_a"), second.watching(generation_id="gen_a"):
        with second.watching(generation_id="gen_a"), first.watching(session_id="s1"):
            # When their counts are published
            first.publish()
            second.publish()
            # Then a reader of the counts sees them all, from either process
            assert first.readers(["g:gen_a", "s:s1", "g:gen_b"]) == {"g:gen_a": 3, "s:s1": 1, "g:gen_b": 0}
            assert second.summary() == {"total": 4, "generations": 1, "sessions": 1}
        # And readers that leave are no longer counted once published (here by the background publisher)
        wait_for(lambda: first.readers(["g:gen_a", "s:s1"]) == {"g:gen_a": 2, "s:s1": 0}, timeout_s=5)
    wait_for(lambda: first.summary()["total"] == 0, timeout_s=5)
    first.close()
    second.close()
    assert r.keys("llm:presence:*") == []


def test_a_process_that_dies_stops_counting(r: redis.Redis) -> None:
    # Given a process with a reader whose counts were published
    alive, dying = Presence(r, INTERVAL_S), Presence(r, INTERVAL_S)
    watching = dying.watching(generation_id="gen_a")
    watching.__enter__()
    dying.publish()
    assert alive.readers(["g:gen_a"]) == {"g:gen_a": 1}
    # When it stops publishing without a word (killed: its thread and its exit handler never run)
    dying._stop.set()
    # Then after a few intervals its readers are no longer counted, nor is it listed
    wait_for(lambda: alive.readers(["g:gen_a"]) == {"g:gen_a": 0}, timeout_s=INTERVAL_S * STALE_INTERVALS + 2)
    alive.publish()
    assert r.zrange("llm:presence:web", 0, -1) == [alive.process_id]
    alive.close()

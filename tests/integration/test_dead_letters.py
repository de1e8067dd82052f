"""Held dead letters on a real Redis: a generation waits for an operator, who replays or drops its entry."""

from __future__ import annotations

import redis

from bridge import dead_letters, keys, streams
from bridge.dead_letters import Decision
from bridge.settings import Settings
from tests.support import Moderation, new_generation, out_events, status_of, wait_for, write_entries
from workers.consumer import ConsumerWorker
from workers.processors import default_processors

HOLD_S = 30.0


def _held(r: redis.Redis, settings: Settings, hold_s: float = HOLD_S) -> tuple[str, Moderation, ConsumerWorker]:
    """A generation held on its poison entry (recorded once, as held), its moderation, and its consumer."""
    settings = settings.model_copy(update={"dead_letter_after": 2, "dead_letter_hold_s": hold_s})
    gid = new_generation(r, settings, "gen_held")
    write_entries(r, gid, ["fine ", "poison ", "after "])
    moderation = Moderation()
    worker = ConsumerWorker(r, settings, [moderation, *default_processors(r)])
    wait_for(lambda: r.xlen(keys.DEAD_LETTERS) == 1, step=lambda: worker.run_once(block_ms=20))
    return gid, moderation, worker


def _only_letter(r: redis.Redis) -> dead_letters.DeadLetter:
    letters, total = dead_letters.list_dead_letters(r, limit=10)
    assert total == len(letters) == 1
    return letters[0]


def test_a_held_generation_waits_and_continues_when_its_entry_is_replayed(r: redis.Redis, settings: Settings) -> None:
    # Given a generation held on an entry its moderation failed twice
    gid, moderation, worker = _held(r, settings)
    letter = _only_letter(r)
    assert letter.held and letter.generation_id == gid and letter.fields["type"] == "token"
    # It waits: what came before is out, nothing after it, and it is not retried while held
    for _ in range(20):
        worker.run_once(block_ms=10)
    assert [d.get("content") for _, d in out_events(r, gid)] == ["fine "]
    assert status_of(r, gid) == "running" and moderation.calls == 2
    # When the moderation backend is fixed and an operator replays the entry
    moderation.process = lambda gen, event: event  # type: ignore[method-assign]
    dead_letters.decide(r, letter, Decision.REPLAY, ttl_ms=60_000)
    # Then the generation continues where it stopped and completes whole, with no error and no dead letter left
    wait_for(lambda: status_of(r, gid) == "completed", step=lambda: worker.run_once(block_ms=20))
    assert streams.load_text(r, gid) == "fine poison after "
    assert [e for e, _ in out_events(r, gid)] == ["token", "token", "token", "done"]
    assert r.xlen(keys.DEAD_LETTERS) == 0
    assert r.hget(keys.gen_meta(gid), "held_entry") == ""


def test_a_dropped_entry_ends_its_held_generation_with_poison_entry(r: redis.Redis, settings: Settings) -> None:
    gid, _, worker = _held(r, settings)
    dead_letters.decide(r, _only_letter(r), Decision.DROP, ttl_ms=60_000)
    wait_for(lambda: status_of(r, gid) == "failed", step=lambda: worker.run_once(block_ms=20))
    events = out_events(r, gid)
    assert [e for e, _ in events] == ["token", "error"] and events[-1][1]["code"] == "poison_entry"
    assert r.xlen(keys.DEAD_LETTERS) == 0
    assert not r.exists(keys.gen_raw(gid))  # nothing pending: acknowledged, deleted with the end


def test_a_hold_that_runs_out_gets_one_last_try_then_the_generation_ends(r: redis.Redis, settings: Settings) -> None:
    # Given a short hold nobody acts on
    gid, moderation, worker = _held(r, settings, hold_s=0.5)
    # When it runs out
    wait_for(lambda: status_of(r, gid) == "failed", step=lambda: worker.run_once(block_ms=20))
    # Then the entry was tried once more, the generation ended with the error, and its one dead letter stays,
    # no longer held
    assert moderation.calls == 3
    assert out_events(r, gid)[-1][1]["code"] == "poison_entry"
    assert not _only_letter(r).held


def test_a_consumer_that_takes_over_a_held_generation_keeps_waiting_without_a_second_record(
    r: redis.Redis, settings: Settings
) -> None:
    # Given a held generation whose consumer dies
    gid, moderation, _ = _held(r, settings)
    # When another consumer takes it over (after the claim idle time) and tries the entry
    successor = ConsumerWorker(
        r,
        settings.model_copy(update={"dead_letter_after": 2, "dead_letter_hold_s": HOLD_S}),
        [moderation, *default_processors(r)],
        name="successor",
    )
    wait_for(
        lambda: gid in successor.owned and moderation.calls >= 3,
        step=lambda: successor.run_once(block_ms=20),
        message="the generation was not taken over",
    )
    for _ in range(10):
        successor.run_once(block_ms=10)
    # Then it still waits, recorded once, and a replay reaches the new owner
    assert status_of(r, gid) == "running" and _only_letter(r).held
    moderation.process = lambda gen, event: event  # type: ignore[method-assign]
    dead_letters.decide(r, _only_letter(r), Decision.REPLAY, ttl_ms=60_000)
    wait_for(lambda: status_of(r, gid) == "completed", step=lambda: successor.run_once(block_ms=20))
    assert streams.load_text(r, gid) == "fine poison after "

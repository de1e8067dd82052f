"""The circuit breaker per model: its Lua script and its state, on fakeredis."""

from __future__ import annotations

import time

import fakeredis
import pytest

from bridge import keys
from bridge.circuit import Circuits, CircuitState
from tests.support import wait_for


@pytest.fixture
def circuits(fake_redis: fakeredis.FakeRedis) -> Circuits:
    return Circuits(fake_redis, threshold=3, cooldown_s=30)


def test_a_model_opens_after_the_threshold_of_failures_in_a_row(circuits: Circuits) -> None:
    # Given two failures: still closed
    assert [circuits.record("m", failed=True) for _ in range(2)] == [1, 2]
    assert not circuits.state("m").open
    # When the third one in a row comes
    assert circuits.record("m", failed=True) == 3
    # Then the model is open for the cool-down
    state = circuits.state("m")
    assert state.open and state.failures == 3
    assert 29 < state.retry_in_s <= 30


def test_a_success_closes_the_circuit_and_starts_the_count_again(circuits: Circuits) -> None:
    for _ in range(3):
        circuits.record("m", failed=True)
    assert circuits.record("m", failed=False) == 0
    assert circuits.state("m") == CircuitState(0, 0.0)
    assert circuits.record("m", failed=True) == 1
    assert circuits.record("m", failed=False) == 0


def test_after_the_cool_down_one_trial_decides(fake_redis: fakeredis.FakeRedis, circuits: Circuits) -> None:
    # Given an open model whose cool-down has passed
    for _ in range(3):
        circuits.record("m", failed=True)
    fake_redis.hset(keys.model_circuit("m"), "open_until", int((time.time() - 1) * 1000))
    assert not circuits.state("m").open
    # When its trial fails, it is open again for a whole cool-down
    assert circuits.record("m", failed=True) == 4
    assert circuits.state("m").retry_in_s > 29


def test_sparse_failures_are_forgotten(fake_redis: fakeredis.FakeRedis, circuits: Circuits) -> None:
    circuits.record("m", failed=True)
    # The count lapses after ten cool-downs without a new failure
    assert 299_000 < fake_redis.pttl(keys.model_circuit("m")) <= 300_000


def test_each_model_has_its_own_circuit(circuits: Circuits) -> None:
    for _ in range(3):
        circuits.record("a", failed=True)
    circuits.record("b", failed=True)
    states = circuits.states(["a", "b", "never-used"])
    assert [states[m].open for m in ("a", "b", "never-used")] == [True, False, False]
    assert [states[m].failures for m in ("a", "b", "never-used")] == [3, 1, 0]
    assert circuits.states([]) == {}


def test_the_public_state() -> None:
    assert CircuitState().public() == {"circuit": "closed", "failures": 0, "retry_in_s": 0.0}
    opened = CircuitState(5, time.time() + 12.04).public()
    assert opened["circuit"] == "open" and opened["failures"] == 5 and 11.9 <= opened["retry_in_s"] <= 12.1


def test_successes_are_written_together_within_their_delay_and_before_a_later_failure(
    fake_redis: fakeredis.FakeRedis,
) -> None:
    # Given a model with two failures in a row, and a process's circuits that delay successes
    circuits = Circuits(fake_redis, threshold=3, cooldown_s=30, success_delay_s=0.05)
    for _ in range(2):
        circuits.record("m", failed=True)
    # When many generations succeed at once
    for _ in range(100):
        circuits.succeeded("m")
    # Then the count is reset within the delay
    wait_for(lambda: circuits.state("m") == CircuitState(0, 0.0), timeout_s=2, message="success not written")
    # And a failure right after a success not written yet counts as the first in a row, not the third
    slow = Circuits(fake_redis, threshold=3, cooldown_s=30, success_delay_s=60)
    for _ in range(2):
        slow.record("n", failed=True)
    slow.succeeded("n")
    assert slow.record("n", failed=True) == 1

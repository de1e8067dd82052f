"""The ticker: one timer that wakes many waiters, and a thread that only runs while someone listens."""

from __future__ import annotations

import threading

from bridge.ticker import Ticker
from tests.support import wait_for


def test_every_registered_waiter_is_woken_each_interval_until_it_leaves() -> None:
    # Given two waiters on a 10 ms ticker
    ticker = Ticker(0.01)
    first, second = threading.Event(), threading.Event()
    ticker.add(first.set)
    ticker.add(second.set)
    # Then both are woken, again and again
    for _ in range(3):
        assert first.wait(1) and second.wait(1)
        first.clear()
        second.clear()
    # When both leave, the ticker's thread ends
    ticker.discard(first.set)
    ticker.discard(second.set)
    wait_for(lambda: ticker._thread is None)
    # And the next waiter starts it again
    third = threading.Event()
    ticker.add(third.set)
    assert third.wait(1)
    ticker.discard(third.set)


def test_one_ticker_per_interval_per_process() -> None:
    assert Ticker.every(0.25) is Ticker.every(0.25)
    assert Ticker.every(0.25) is not Ticker.every(0.5)

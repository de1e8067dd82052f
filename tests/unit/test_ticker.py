"""The ticker: one timer that wakes many waiters, and a thread that only runs while someone listens."""

from __future__ import annotations

import threading
import time

from bridge.ticker import StopEvent, Ticker
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


def test_a_timed_wait_ends_at_its_time_and_says_it_was_not_stopped() -> None:
    stop = StopEvent()
    started = time.monotonic()
    assert stop.wait(0.05) is False
    assert 0.05 <= time.monotonic() - started < 0.5


def test_many_waits_each_end_at_their_own_time() -> None:
    stop = StopEvent()
    ended: dict[float, float] = {}

    def wait(delay_s: float) -> None:
        started = time.monotonic()
        stop.wait(delay_s)
        ended[delay_s] = time.monotonic() - started

    threads = [threading.Thread(target=wait, args=(d,)) for d in (0.12, 0.02, 0.07)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(2)
    assert all(delay <= took < delay + 0.2 for delay, took in ended.items()) and len(ended) == 3


def test_a_stop_ends_a_long_wait_at_once() -> None:
    stop = StopEvent()
    threading.Timer(0.05, stop.set).start()
    started = time.monotonic()
    assert stop.wait(30) is True
    assert time.monotonic() - started < 1
    assert stop.wait(30) is True  # and every later wait

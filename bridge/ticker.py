"""One timer for many waiters: a ticker calls every registered callback every ``interval_s``.

Under gevent a wait with a timeout arms a timer of its own, and arming one per token (per generation in a
worker, per client in a web process) cost those processes a sixth of their CPU. Waiters that only need to
wake up now and then (for a heartbeat, a keep-alive, a deadline) wait without a timeout instead and let a
ticker wake them. A ticker's thread ends when nothing is registered and starts again with the next
registration. A ``Clock`` does the same for waits that end at a given time (a token source pacing its tokens):
``StopEvent.wait(timeout)`` is woken by it.
"""

from __future__ import annotations

import heapq
import itertools
import math
import threading
import time
from collections.abc import Callable


class Ticker:
    """Calls each registered callback (an ``Event.set``, say) every ``interval_s``; one thread per interval."""

    _by_interval: dict[float, Ticker] = {}
    _registry_lock = threading.Lock()

    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self._callbacks: set[Callable[[], object]] = set()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    @classmethod
    def every(cls, interval_s: float) -> Ticker:
        """The process's ticker for ``interval_s``."""
        with cls._registry_lock:
            ticker = cls._by_interval.get(interval_s)
            if ticker is None:
                ticker = cls._by_interval[interval_s] = cls(interval_s)
            return ticker

    def add(self, callback: Callable[[], object]) -> None:
        with self._lock:
            self._callbacks.add(callback)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="tokenbridge-ticker", daemon=True)
                self._thread.start()

    def discard(self, callback: Callable[[], object]) -> None:
        with self._lock:
            self._callbacks.discard(callback)

    def _run(self) -> None:
        while True:
            time.sleep(self.interval_s)
            with self._lock:
                if not self._callbacks:
                    self._thread = None
                    return
                callbacks = list(self._callbacks)
            for callback in callbacks:
                callback()


class Clock:
    """One timer for many timed waits: ``wake_at`` sets an event at a given time, every event due in the same
    millisecond set by one wake-up of the clock's thread. A waiter then waits without a timeout of its own."""

    _GRAIN_S = 0.001

    def __init__(self) -> None:
        self._due: list[tuple[float, int, threading.Event]] = []
        self._count = itertools.count()
        self._lock = threading.Lock()
        self._changed = threading.Event()
        self._thread: threading.Thread | None = None

    def wake_at(self, deadline: float, event: threading.Event) -> None:
        """Set ``event`` once ``time.monotonic()`` reaches ``deadline`` (rounded up to the millisecond)."""
        deadline = math.ceil(deadline / self._GRAIN_S) * self._GRAIN_S
        with self._lock:
            earliest = not self._due or deadline < self._due[0][0]
            heapq.heappush(self._due, (deadline, next(self._count), event))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="tokenbridge-clock", daemon=True)
                self._thread.start()
        if earliest:
            self._changed.set()

    def _run(self) -> None:
        while True:
            with self._lock:
                if not self._due:
                    self._thread = None
                    return
                wait_s = self._due[0][0] - time.monotonic()
            if wait_s > 0:
                self._changed.wait(wait_s)  # one timer for every waiter; sooner when an earlier deadline came
                self._changed.clear()
            now = time.monotonic()
            due = []
            with self._lock:
                while self._due and self._due[0][0] <= now:
                    due.append(heapq.heappop(self._due)[2])
            for event in due:
                event.set()


CLOCK = Clock()


class StopEvent(threading.Event):
    """A stop flag whose timed ``wait`` arms no timer of its own (the process's ``Clock`` wakes it), and that any
    ``set`` ends at once. What a token source gets to wait on: a source paced token by token waits thousands of
    times a second in one worker process."""

    def __init__(self) -> None:
        super().__init__()
        self._waiters: set[threading.Event] = set()

    def set(self) -> None:
        super().set()
        for waiter in list(self._waiters):
            waiter.set()

    def wait(self, timeout: float | None = None) -> bool:
        if timeout is None or self.is_set():
            return super().wait(timeout)
        waiter = threading.Event()
        self._waiters.add(waiter)
        try:
            if not self.is_set():
                CLOCK.wake_at(time.monotonic() + timeout, waiter)
                waiter.wait()
            return self.is_set()
        finally:
            self._waiters.discard(waiter)

"""One timer for many waiters: a ticker calls every registered callback every ``interval_s``.

Under gevent a wait with a timeout arms a timer of its own, and arming one per token (per generation in a
worker, per client in a web process) cost those processes a sixth of their CPU. Waiters that only need to
wake up now and then (for a heartbeat, a keep-alive, a deadline) wait without a timeout instead and let a
ticker wake them. A ticker's thread ends when nothing is registered and starts again with the next
registration.
"""

from __future__ import annotations

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

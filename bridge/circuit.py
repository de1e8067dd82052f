"""A circuit breaker per model: after ``CIRCUIT_FAILURES`` upstream failures in a row, the model is *open*.

While a model is open (``CIRCUIT_COOLDOWN_S``), new generations of it are refused at once with 503
``model_unavailable`` (and ``Retry-After``), or go to the registry entry's ``fallback`` model when that one is
closed. Once the cool-down has passed, the next generation is a trial: a success closes the circuit, a failure
opens it again for another cool-down. Every worker and web process shares the state in
``llm:model:{model}:circuit`` (``failures``, ``open_until`` in ms).

What counts as a failure is an upstream that could not answer (``FAILURE_CODES``): not a request the upstream
rejected, a cancel or a length limit.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

import redis

from bridge import keys, scripts

logger = logging.getLogger(__name__)

FAILURE_CODES = frozenset({"provider_unavailable", "provider_error", "provider_timeout"})
# The failure count lapses after this many cool-downs without a new failure: sparse failures do not add up.
_FORGET_AFTER_COOLDOWNS = 10
# How long a success waits to be written with the others (``Circuits.succeeded``): a trial's success closes the
# circuit that much later.
SUCCESS_DELAY_S = 1.0


@dataclass(frozen=True, slots=True)
class CircuitState:
    failures: int = 0
    open_until: float = 0.0  # UNIX seconds

    @property
    def open(self) -> bool:
        return self.open_until > time.time()

    @property
    def retry_in_s(self) -> float:
        return max(0.0, self.open_until - time.time())

    def public(self) -> dict[str, Any]:
        return {
            "circuit": "open" if self.open else "closed",
            "failures": self.failures,
            "retry_in_s": round(self.retry_in_s, 1),
        }


class Circuits:
    def __init__(
        self, client: redis.Redis, *, threshold: int, cooldown_s: float, success_delay_s: float = SUCCESS_DELAY_S
    ) -> None:
        self.client = client
        self.threshold = threshold
        self.cooldown_ms = int(cooldown_s * 1000)
        self.success_delay_s = success_delay_s
        # Models with a success not written yet (``succeeded``), and the thread that writes them.
        self._successes: set[str] = set()
        self._lock = threading.Lock()
        self._writer: threading.Thread | None = None

    def record(self, model: str, *, failed: bool) -> int:
        """A generation's outcome against its model's upstream; returns the failures in a row (0 after a success).

        A success of ``succeeded`` not written yet is written first, in the same round trip: the order holds.
        """
        calls = [self._call(model, failed=False)] if failed and self._take_success(model) else []
        calls.append(self._call(model, failed=failed))
        results = scripts.run_batch(self.client, calls, raise_on_error=True)
        return scripts.decode_count(results[-1], scripts.Status.RECORDED)

    def succeeded(self, model: str) -> None:
        """A success, written within ``success_delay_s`` with the others of the process: a success only resets the
        count of failures in a row, so one write per model and interval does for any number of generations (and
        ``record`` of a failure writes a pending success before it)."""
        with self._lock:
            self._successes.add(model)
            if self._writer is None:
                self._writer = threading.Thread(target=self._write_successes, name="circuit-successes", daemon=True)
                self._writer.start()

    def flush(self) -> None:
        """Write the successes not written yet, now."""
        with self._lock:
            models, self._successes = self._successes, set()
        if not models:
            return
        try:
            scripts.run_batch(self.client, [self._call(m, failed=False) for m in models], raise_on_error=True)
        except redis.RedisError as exc:
            logger.warning("Could not record successes of models %s in their circuits: %s", sorted(models), exc)
            with self._lock:
                self._successes |= models  # tried again at the next interval

    def _write_successes(self) -> None:
        while True:
            time.sleep(self.success_delay_s)
            self.flush()
            with self._lock:
                if not self._successes:
                    self._writer = None
                    return

    def _take_success(self, model: str) -> bool:
        with self._lock:
            pending = model in self._successes
            self._successes.discard(model)
            return pending

    def _call(self, model: str, *, failed: bool) -> scripts.Call:
        forget_ms = self.cooldown_ms * _FORGET_AFTER_COOLDOWNS
        args = [1 if failed else 0, int(time.time() * 1000), self.threshold, self.cooldown_ms, forget_ms]
        return scripts.Call(scripts.CIRCUIT_RECORD, [keys.model_circuit(model)], args)

    def states(self, models: list[str]) -> dict[str, CircuitState]:
        pipe = self.client.pipeline(transaction=False)
        for model in models:
            pipe.hmget(keys.model_circuit(model), "failures", "open_until")
        result = {}
        for model, (failures, open_until) in zip(models, pipe.execute() if models else [], strict=True):
            result[model] = CircuitState(int(failures or 0), int(open_until or 0) / 1000)
        return result

    def state(self, model: str) -> CircuitState:
        return self.states([model])[model]

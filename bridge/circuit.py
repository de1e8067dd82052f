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

import time
from dataclasses import dataclass
from typing import Any

import redis

from bridge import keys, scripts

FAILURE_CODES = frozenset({"provider_unavailable", "provider_error", "provider_timeout"})
# The failure count lapses after this many cool-downs without a new failure: sparse failures do not add up.
_FORGET_AFTER_COOLDOWNS = 10

RECORD = """
-- KEYS: circuit hash   ARGV: failed (1/0), now_ms, threshold, cooldown_ms, forget_ms
if ARGV[1] == '0' then
  redis.call('DEL', KEYS[1])
  return 0
end
local failures = redis.call('HINCRBY', KEYS[1], 'failures', 1)
if failures >= tonumber(ARGV[3]) then
  redis.call('HSET', KEYS[1], 'open_until', tonumber(ARGV[2]) + tonumber(ARGV[4]))
end
redis.call('PEXPIRE', KEYS[1], ARGV[5])
return failures
"""


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
    def __init__(self, client: redis.Redis, *, threshold: int, cooldown_s: float) -> None:
        self.client = client
        self.threshold = threshold
        self.cooldown_ms = int(cooldown_s * 1000)

    def record(self, model: str, *, failed: bool) -> int:
        """A generation's outcome against its model's upstream; returns the failures in a row (0 after a success)."""
        forget_ms = self.cooldown_ms * _FORGET_AFTER_COOLDOWNS
        args = [1 if failed else 0, int(time.time() * 1000), self.threshold, self.cooldown_ms, forget_ms]
        return int(scripts.run(self.client, RECORD, [keys.model_circuit(model)], args))

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

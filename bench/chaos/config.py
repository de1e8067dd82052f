"""What a chaos run does: every knob from a flag or an environment variable (flags win)."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, fields


@dataclass(frozen=True)
class Config:
    duration_s: float = 300.0  # how long new generations are started; the run then drains
    concurrency: int = 200  # generations kept running at once
    fault_interval_s: float = 7.0  # mean time between two faults (exponential); 0: no faults
    seed: int = 0  # 0: a random seed, printed so that the run can be repeated
    webs: int = 2
    workers: int = 2
    consumers: int = 2
    words_min: int = 20
    words_max: int = 80
    delay_ms_min: int = 100  # pace of the echo model's tokens
    delay_ms_max: int = 400
    external_share: float = 0.1  # generations fed by an external producer instead of a Celery task
    cancel_share: float = 0.06
    ws_share: float = 0.4  # readers over WebSocket (the others read SSE)
    second_reader_share: float = 0.2  # generations read by a second reader at once
    drop_share: float = 0.3  # readers that disconnect at random and resume
    session_share: float = 0.3  # sessions followed by a session reader
    # The recovery settings, as shipped: a dead process's work moves on its heartbeat (DEAD_AFTER_MS); the idle time
    # and the lease are the backstops.
    dead_after_ms: int = 2500
    heartbeat_ms: int = 1000
    claim_idle_ms: int = 10_000
    lease_ms: int = 15_000
    # A task message a worker took but never started (it died, or lost the broker, first) waits in the Redis
    # broker's unacknowledged set for this long before it is delivered again (the default is 3600 s).
    visibility_timeout_s: int = 30
    hang_s: float = 180.0  # a reader with no terminal this long after its generation should have ended is hung
    drain_s: float = 300.0  # longest wait for the last readers after the load stops (longer than hang_s)
    json_path: str = ""  # also write the report as JSON here

    @classmethod
    def parse(cls, argv: list[str] | None = None) -> Config:
        parser = argparse.ArgumentParser(
            prog="python -m bench.chaos",
            description="Mixed load on the real processes while faults are injected; checks every generation.",
        )
        defaults = cls()
        for f in fields(cls):
            env = f"CHAOS_{f.name.upper()}"
            default = getattr(defaults, f.name)
            value = type(default)(os.environ[env]) if env in os.environ else default
            parser.add_argument(
                f"--{f.name.replace('_', '-')}",
                type=type(default),
                default=value,
                help=f"env {env} (default {default})",
            )
        return cls(**vars(parser.parse_args(argv)))

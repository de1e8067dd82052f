"""A short chaos run (``make chaos`` is the long one): mixed load on two of every process while faults are
injected at random, then every generation checked (bench/chaos)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.procfile import ROOT

pytestmark = [pytest.mark.slow, pytest.mark.faults]


@pytest.mark.timeout(400)
def test_a_short_chaos_run_loses_duplicates_and_hangs_nothing(tmp_path: Path, record: Callable[..., None]) -> None:
    # Given 50 users reading over SSE and WebSocket, dropping and resuming, cancelling, producing externally,
    # When for 30 s a fault is injected every 3 s on average (kill -9, SIGTERM, SIGSTOP, Redis restarts)
    report = tmp_path / "chaos.json"
    run = subprocess.run(
        [sys.executable, "-m", "bench.chaos", "--duration-s", "30", "--concurrency", "50", "--fault-interval-s", "3",
         "--words-min", "10", "--words-max", "30", "--delay-ms-max", "150", "--hang-s", "120", "--drain-s", "200",
         "--json-path", str(report)],
        cwd=ROOT, capture_output=True, text=True, timeout=380,
    )  # fmt: skip
    print(run.stdout[-4000:], run.stderr[-4000:])
    summary = json.loads(report.read_text())
    record(scenario="chaos (short)", **{k: summary[k] for k in ("generations", "faults", "lost", "duplicated", "hung")})
    # Then every generation ended whole and once, or with a documented error, and nothing is left pending
    assert (summary["lost"], summary["duplicated"], summary["hung"], summary["wrong"]) == (0, 0, 0, 0), summary
    assert summary["pending"] == {}
    assert run.returncode == 0
    assert summary["generations"] >= 50 and summary["faults"] >= 3

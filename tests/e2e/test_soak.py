"""``make soak`` cannot rot: a 30-second soak at a tiny load runs the whole stack and writes its report."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from bench.soak import Config, run

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


@pytest.mark.timeout(300)
def test_a_short_soak_reads_every_token_and_reports_every_process(tmp_path: Path) -> None:
    config = Config(minutes=0.5, streams=4, rate=20, tokens=20, warmup_minutes=0.15, sample_s=5, name="soak-test")
    # In a thread of its own: the soak runs its own event loop (asyncio.run), and the browser tests' Playwright
    # leaves one running in this thread.
    with ThreadPoolExecutor(1) as pool:
        report = pool.submit(run, config, tmp_path).result()

    raw = json.loads((tmp_path / "soak-test.json").read_text())
    tally, samples = raw["tally"], raw["samples"]
    assert tally["generations"] > 50
    assert tally["ws_readers"] > 0 and tally["sse_readers"] > 0 and tally["resumes"] > 0
    assert tally["errors"] == {} and tally["gaps"] == 0 and tally["duplicates"] == 0 and tally["short"] == 0
    assert tally["tokens"] == tally["terminals"]["done"] * config.tokens
    assert len(samples) >= 7
    processes = set(samples[-1]["rss_kb"])
    assert {"web", "web worker 1", "web worker 2", "worker", "consumer", "redis"} <= processes
    text = report.read_text()
    for process in processes:
        assert f"| {process} RSS |" in text
    assert "| redis used_memory |" in text
    assert (tmp_path / "soak-test.png").stat().st_size > 10_000

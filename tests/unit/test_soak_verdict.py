"""The soak's verdict: a least-squares slope after warm-up, and growth judged against a stated tolerance."""

from __future__ import annotations

from typing import Any

import pytest

from bench.soak import STACK_ENV, WARMUP_MINUTES, key_lifetime_minutes, slope_per_minute, tolerance_kb, verdicts


def _samples(rss_kb: list[float], used_kb: float = 1000) -> list[dict[str, Any]]:
    return [
        {"minute": float(minute), "rss_kb": {"web worker 1": kb}, "redis_used_memory_kb": used_kb}
        for minute, kb in enumerate(rss_kb)
    ]


def test_slope_is_the_least_squares_fit() -> None:
    assert slope_per_minute([(0, 10), (1, 12), (2, 14)]) == pytest.approx(2)
    assert slope_per_minute([(0, 10), (1, 13), (2, 10), (3, 13)]) == pytest.approx(0.6)
    assert slope_per_minute([(5, 10)]) == 0


def test_tolerance_is_two_megabytes_or_three_percent() -> None:
    assert tolerance_kb(10_000) == 2048
    assert tolerance_kb(200_000) == 6000


def test_growth_after_warm_up_beyond_tolerance_is_flagged() -> None:
    # Warm-up climbs by 50 MB, then 100 KB a minute for 60 minutes (6 MB: beyond 2 MB or 3 % of 100 MB).
    warm = [50_000 + 5_000 * m for m in range(10)]
    after = [100_000 + 100 * m for m in range(61)]
    # The last sample is taken at rest (after the load) and is not part of the trend.
    at_rest = {"minute": 71.0, "rss_kb": {"web worker 1": 50_000}, "redis_used_memory_kb": 1000, "at_rest": True}
    rows = {row["series"]: row for row in verdicts([*_samples(warm + after), at_rest], 10)}
    row = rows["web worker 1 RSS"]
    assert row["slope_kb_per_min"] == pytest.approx(100, abs=1)
    assert row["verdict"] == "GROWS"
    assert rows["redis used_memory"]["verdict"] == "flat"


def test_noise_and_the_climb_of_warm_up_are_flat() -> None:
    warm = [50_000 + 5_000 * m for m in range(10)]
    after = [100_000 + (300 if m % 2 else -300) for m in range(61)]
    rows = {row["series"]: row for row in verdicts(_samples(warm + after), 10)}
    assert rows["web worker 1 RSS"]["verdict"] == "flat"


def test_the_warm_up_lasts_until_the_longest_lived_keys_of_a_generation_expire() -> None:
    # A session's owner key: twice the 5-minute retention after the 2 + 2 minutes a generation may wait and run,
    # and a minute more
    assert key_lifetime_minutes(STACK_ENV) == 15
    assert WARMUP_MINUTES == 16
    longer = {**STACK_ENV, "QUEUE_TIMEOUT_S": "600", "GENERATION_MAX_DURATION_S": "600"}
    assert key_lifetime_minutes(longer) == 31

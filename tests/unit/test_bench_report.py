"""The benchmark's report: what it reads out of its own measurements."""

from __future__ import annotations

from pathlib import Path

from bench.profile import share
from bench.tables import flower_cost, latency_table

CONSUMER_LOOP = "main (workers/__main__.py:41);ConsumerWorker.run_once (workers/consumer.py:192)"
SENDER = "Thread._bootstrap (threading.py:1002);CeleryEvents._run (workers/celery_events.py:229)"


def _row(system: str) -> dict[str, object]:
    return {
        "system": system,
        "streams": 300,
        "latency_ms": {"p50": 1, "p90": 2, "p99": 3, "max": 4},
        "latency_ms_after_first_second": {"p50": 1, "p99": 2},
        "delivered": 10,
        "expected": 10,
        "gaps": 0,
        "duplicates": 0,
        "elapsed_s": 1.0,
        "client_cpu_s": 0.1,
        "rss_mb": {"web": 80},
        "redis_connections_web": 5,
        "cpu_us_per_token": {"consumer": 50.0},
    }


def test_a_run_of_one_system_keeps_its_rows() -> None:
    table = latency_table([_row("ours")], [])

    assert "| 300 | tokenbridge | 1 | 2 | 3 | 4 | 2 | 10 / 10 |" in table


def test_a_row_of_an_earlier_run_has_no_figure_after_the_first_second() -> None:
    row = _row("ours")
    del row["latency_ms_after_first_second"]

    assert "| 300 | tokenbridge | 1 | 2 | 3 | 4 |  | 10 / 10 |" in latency_table([row], [])


def test_the_flower_share_counts_cpu_not_waits(tmp_path: Path) -> None:
    # Given a consumer profile: 90 samples in its loop, 6 sending events, 4 with the sender waiting
    profile = tmp_path / "consumer.txt"
    profile.write_text(
        f"{CONSUMER_LOOP} 90\n"
        f"{SENDER};EventDispatcher.flush (celery/events/dispatcher.py:240) 6\n"
        f"{SENDER};Event.wait (threading.py:629);Condition.wait (threading.py:331) 4\n"
    )

    # Then the share is the sending only, of all busy samples
    assert share(profile, ("workers/celery_events.py",)) == 0.06
    # And the report turns it into µs per token of the consumer's own figure
    assert "about 3.00 µs of its 50.0 µs" in flower_cost(tmp_path, [_row("ours")])


def test_no_profile_no_flower_line(tmp_path: Path) -> None:
    assert share(tmp_path / "consumer.txt", ("x",)) is None
    assert flower_cost(tmp_path, [_row("ours")]) == ""

"""The benchmark's cost targets: the verdict of each line, which parts run, the earlier run's figures, and the
WebSocket framing of the load client. No process is started."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from tokenbridge_client.client import SseMessage

from bench import report
from bench.client import StreamResult
from bench.deployment import report_name
from bench.load import latency_split, written_before_reader_pct
from bench.plan import PARTS, Plan
from bench.ws import CLOSE, TEXT, client_frame, pooled, read_frame
from tests.support import run_in_own_loop


def _row(system: str, *, p50: float = 10, p99: float = 40, pipeline: float = 100, streams: int = 300) -> dict[str, Any]:
    return {
        "system": system,
        "streams": streams,
        "rate": 20.0,
        "latency_ms": {"p50": p50, "p90": p99, "p99": p99, "max": p99},
        "delivered": 10,
        "expected": 10,
        "gaps": 0,
        "duplicates": 0,
        "cpu_us_per_token": {"pipeline": pipeline},
    }


def _generation_cpu(total: float, done: int = 300) -> dict[str, Any]:
    return {
        "generations": 300,
        "done": done,
        "cpu_ms_per_generation": {"web": 1.0, "worker": 1.0, "consumer": 0.5, "redis": 0.5, "total": total},
    }


def _burst(p50: float | None, with_first_token: int = 1000) -> dict[str, Any]:
    quantiles = {"p50": p50, "p90": p50, "p99": p50, "max": p50}
    return {
        "submissions": 1000,
        "with_first_token": with_first_token,
        "ttft_from_post_s": quantiles,
        "ttft_from_burst_start_s": quantiles,
    }


def _ws(sse: float, ws: float) -> dict[str, Any]:
    return {
        "readers": 150,
        "tokens": 100,
        "sse": {"web_cpu_us_per_event": sse, "done": 150},
        "ws": {"web_cpu_us_per_event": ws, "done": 150},
        "ws_over_sse": round(ws / sse, 2),
    }


def _memory(bytes_per_token: float, after_window: int) -> dict[str, Any]:
    return {
        "answers": 100,
        "accepted": 100,
        "tokens_per_answer": 200,
        "tokens": 20_000,
        "text_bytes": 110_000,
        "finished_after_s": 3.0,
        "resume_window_s": 5.0,
        "bytes_per_token": bytes_per_token,
        "bytes_after_window": after_window,
        "bytes_per_token_after_window": after_window / 20_000,
        "allowance_after_window": 110_000 + 1024 * 100,
    }


def _upstream(handshakes: int, done: int = 50) -> dict[str, Any]:
    return {
        "generations": 50,
        "concurrency": 2,
        "handshakes": handshakes,
        "handshakes_per_generation": handshakes / 50,
        "done": done,
        "errors": [],
    }


def test_pipeline_cpu_is_met_at_no_more_than_the_peers() -> None:
    assert report.pipeline_cpu_line(_row("ours", pipeline=115), _row("baseline", pipeline=115)).endswith(": met")
    line = report.pipeline_cpu_line(_row("ours", pipeline=593), _row("baseline", pipeline=115))
    assert "tokenbridge 593 µs, Flask-SSE 115 µs" in line
    assert ": MISSED (measured cause: " in line


def test_a_missed_target_says_where_the_difference_is() -> None:
    # CPU: process by process against the peer's
    ours, peer = _row("ours", pipeline=246), _row("baseline", pipeline=147)
    ours["cpu_us_per_token"].update(web=73, worker=44, consumer=55, redis=74)
    peer["cpu_us_per_token"].update(web=123, publisher=15, redis=10)
    assert report.pipeline_cpu_line(ours, peer).endswith(
        "(measured cause: worker and consumer 99 µs where Flask-SSE's publisher spends 15, Redis 74 against its 10; "
        "web 73 against its 123)"
    )
    # p99: the tokens after each stream's first second, against the whole step's
    ours, peer = _row("ours", p99=160), _row("baseline", p99=55)
    ours[report.AFTER_FIRST_SECOND], peer[report.AFTER_FIRST_SECOND] = {"p99": 28}, {"p99": 46}
    assert report.latency_line(ours, peer).endswith(
        ": MISSED (measured cause: each stream's tokens after its first second have p99 28 ms, Flask-SSE's 46 ms: "
        "the tail is the step's starts)"
    )
    # ... and which side of the raw write the starts' latency went
    ours["latency_split_ms"] = {"to_raw_first_second": {"p99": 12}, "raw_to_reader_first_second": {"p99": 150}}
    assert report.latency_line(ours, peer).endswith(
        "the tail is the step's starts; in each stream's first second, producer → raw write p99 12 ms (the worker), "
        "raw write → reader p99 150 ms (consumer, hub, web))"
    )
    # ... and what is left of it once the wait for readers not there yet is counted out
    ours["latency_ms_once_connected"], ours["written_before_reader_pct"] = {"p99": 90}, 2.5
    assert report.latency_line(ours, peer).endswith(
        "(consumer, hub, web); counted from when its reader's stream was answered, for the 2.5 % of tokens written "
        "before (Flask-SSE publishes nothing before every reader is there), p99 90 ms)"
    )
    # capacity: what it would be by that p99
    steps = [_row("ours", streams=100, p99=50), _row("ours", streams=300, p99=160)]
    steps[0][report.AFTER_FIRST_SECOND], steps[1][report.AFTER_FIRST_SECOND] = {"p99": 10}, {"p99": 28}
    peers = [_row("baseline", streams=300, p99=55)]
    peers[0][report.AFTER_FIRST_SECOND] = {"p99": 46}
    assert report.capacity_line(steps, peers).endswith(
        "(measured cause: by the p99 of each stream's tokens after its first second, tokenbridge 300 streams, "
        "Flask-SSE 300)"
    )


def test_latency_at_300_streams_is_judged_against_the_peers_p99() -> None:
    peer = _row("baseline", p99=35)
    # 1.5 x 35 = 52.5
    assert report.latency_line(_row("ours", p50=15, p99=52.5), peer).endswith(": met")
    assert report.latency_line(_row("ours", p50=15, p99=53), peer).endswith(": MISSED")  # no figure after 1 s
    assert report.latency_line(_row("ours", p50=16, p99=20), peer).endswith(": MISSED")  # cores unknown: no cause
    assert report.latency_line(_row("ours"), None).endswith(": not judged")


def test_capacity_must_be_twice_the_peers() -> None:
    ours = [_row("ours", streams=500, p99=90), _row("ours", streams=1000, p99=99)]
    assert report.capacity_line(ours, [_row("baseline", streams=500, p99=50)]).endswith(": met")
    assert report.capacity_line(ours, [_row("baseline", streams=750, p99=50)]).endswith(": MISSED")
    assert report.capacity_line(ours, []).endswith(": not judged")


def test_no_peer_target_without_our_load_levels() -> None:
    assert report.peer_targets([], [_row("baseline")]) == []


def test_cpu_per_generation_at_most_4_ms_and_every_generation_done() -> None:
    assert report.generation_cpu_line(_generation_cpu(4.0)).endswith(": met")
    assert report.generation_cpu_line(_generation_cpu(16.2)).endswith(": MISSED")
    line = report.generation_cpu_line(_generation_cpu(3.0, done=299))
    assert "only 299 of 300 ended with done" in line
    assert line.endswith(": MISSED")


def test_cpu_per_generation_missed_says_what_a_generation_is_made_of() -> None:
    # Given a run that measured a bare request and the Redis commands of a generation
    measured = {
        **_generation_cpu(5.6),
        "bare_request_web_ms": {"kept_alive": 0.25, "new_connection": 0.33},
        "redis_commands_per_generation": {"evalsha": 4.05, "exec": 2.0, "brpop": 1.0, "lpush": 1.0, "hset": 7.0},
    }
    # When its CPU per generation misses the target
    line = report.generation_cpu_line(measured)
    # Then the line gives the cause from those measurements: two bare requests, the commands, Celery's round trips
    assert ": MISSED (measured cause: web 1.0 ms holds two HTTP requests, 0.58 ms for two bare ones" in line
    assert "15.1 commands per generation" in line and "Celery adds 4.0 round trips of its own" in line
    assert "LPUSH 1.0, BRPOP 1.0, EXEC 2.0" in line
    # And the section lists the commands
    assert "| EVALSHA | 4.05 |" in report.costs_section({"generation_cpu": {**measured, **_section_fields()}})
    # And an older run without those measurements keeps its plain line
    assert report.generation_cpu_line(_generation_cpu(5.6)).endswith(": MISSED")


def _section_fields() -> dict[str, Any]:
    return {"concurrency": 20, "request": {}, "elapsed_s": 1.0, "errors": [], "idle_cpu_ms_per_s": 20.0,
            "idle_cpu_ms_per_generation": 0.1}  # fmt: skip


def test_burst_first_token_p50_at_most_one_and_a_half_seconds_from_each_post() -> None:
    assert report.burst_line(_burst(1.5)).endswith(": met")
    assert report.burst_line(_burst(1.6)).endswith(": MISSED")
    assert report.burst_line(_burst(0.5, with_first_token=999)).endswith(": MISSED")


def test_websocket_at_most_1_2_times_sse() -> None:
    assert report.ws_line(_ws(50.0, 60.0)).endswith(": met")
    assert report.ws_line(_ws(51.0, 141.0)).endswith(": MISSED")


def test_memory_per_token_right_after_and_after_the_window() -> None:
    right_after, after_window = report.memory_lines(_memory(150, 110_000 + 102_400))
    assert right_after.endswith(": met")
    assert after_window.endswith(": met")
    right_after, after_window = report.memory_lines(_memory(378, 7_460_000))
    assert right_after.endswith(": MISSED")
    assert "7460000 bytes = 373.0 per token" in after_window
    assert after_window.endswith(": MISSED")


def test_memory_says_when_the_answers_outlasted_the_window() -> None:
    slow = {**_memory(100, 1), "finished_after_s": 9.0}
    assert "longer than the 5 s resume window" in report.memory_lines(slow)[0]


def test_upstream_handshakes_at_most_the_generations_running_at_once() -> None:
    assert report.upstream_line(_upstream(2)).endswith(": met")
    assert report.upstream_line(_upstream(50)).endswith(": MISSED")
    assert report.upstream_line(_upstream(1, done=10)).endswith(": MISSED")


def test_cost_targets_has_a_line_per_measurement_that_ran() -> None:
    extra = {"generation_cpu": _generation_cpu(3.0), "memory": _memory(100, 1), "upstream_tls": _upstream(1)}
    assert len(report.cost_targets(extra)) == 4
    assert report.cost_targets({}) == []


def test_before_and_after_shows_what_the_earlier_run_has() -> None:
    earlier = {"ours": [], "baseline": [], "extra": {"generation_cpu": _generation_cpu(16.0)}}
    now = {"ours": [], "baseline": [], "extra": {"generation_cpu": _generation_cpu(3.5), "burst": _burst(0.8)}}

    table = report.before_after(earlier, now)

    assert "| CPU per generation, total (ms) | 16.0 | 3.5 |" in table
    assert "burst" not in table  # the earlier run has no burst
    assert report.before_after({"extra": {}}, now) == ""
    now["machine"] = {"yardstick_ms": 120.0}
    assert "| machine yardstick: a fixed Python loop (ms of CPU) | — | 120.0 |" in report.before_after(earlier, now)
    # Reports from machines of different speeds say so
    earlier["machine"], now["machine"] = {"yardstick_ms": 50.0}, {"yardstick_ms": 120.0}
    assert "| machine yardstick: a fixed Python loop (ms of CPU) | 50.0 | 120.0 |" in report.before_after(earlier, now)


def test_the_plan_runs_everything_by_default_and_one_part_alone() -> None:
    assert all(Plan.from_env({}).wants(part) for part in PARTS)
    plan = Plan.from_env({"BENCH_ONLY": "memory", "BENCH_MEMORY_ANSWERS": "10"})
    assert [part for part in PARTS if plan.wants(part)] == ["memory"]
    assert plan.memory_answers == 10
    assert not Plan.from_env({"BENCH_BURST": "0"}).wants("burst")
    with pytest.raises(SystemExit, match="unknown part"):
        Plan.from_env({"BENCH_ONLY": "memroy"})


def test_a_client_frame_is_masked_and_reads_back() -> None:
    payload = b'{"type": "cancel"}' * 10  # 180 bytes: a 16-bit length
    frame = client_frame(TEXT, payload, mask=b"\x01\x02\x03\x04")
    assert frame[0] == 0x80 | TEXT and frame[1] == 0x80 | 126
    assert payload not in frame

    async def read() -> tuple[bool, int, bytes]:
        reader = asyncio.StreamReader()
        reader.feed_data(frame + client_frame(CLOSE, b"\x03\xe8"))
        return await read_frame(reader)

    assert run_in_own_loop(read()) == (True, TEXT, payload)


def test_an_unmasked_server_frame_reads_as_is() -> None:
    async def read() -> tuple[bool, int, bytes]:
        reader = asyncio.StreamReader()
        reader.feed_data(b"\x88\x02\x03\xe8")  # close, 1000
        return await read_frame(reader)

    assert run_in_own_loop(read()) == (True, CLOSE, b"\x03\xe8")


def test_a_tokens_latency_splits_at_its_raw_write() -> None:
    # Given a stream whose tokens were written 2 ms after their producer ts and read 10 ms after that
    result = StreamResult()
    for n in range(40):
        ts = 1000.0 + n * 0.05
        body = {"seq": n, "content": "x", "ts": ts}
        message = SseMessage(event="token", data=json.dumps(body), id=f"{round((ts + 0.002) * 1000)}-0")
        result.record(message, received=ts + 0.012)

    # When the load process splits the latencies
    split = latency_split([result], rate=20)

    # Then the worker's part and the rest's are told apart, for every token and for the first second
    assert split is not None
    assert split["to_raw"]["p99"] == split["to_raw_first_second"]["p99"] == pytest.approx(2, abs=0.01)
    assert split["raw_to_reader"]["p50"] == pytest.approx(10, abs=0.01)


def test_a_token_written_before_its_reader_was_there_counts_from_when_it_was() -> None:
    # Given a stream answered at t=1000.1: two tokens written before (caught up at once), two after
    result = StreamResult(connected_at=1000.1)
    for n, (ts, received) in enumerate([(1000.0, 1000.12), (1000.05, 1000.13), (1000.1, 1000.11), (1000.15, 1000.16)]):
        result.record(SseMessage(event="token", data=json.dumps({"seq": n, "content": "x", "ts": ts}), id=""), received)

    # Then their latency from the producer ts stays as it is, and once connected counts from the answer
    assert result.latencies_s == pytest.approx([0.12, 0.08, 0.01, 0.01])
    assert result.once_connected_s == pytest.approx([0.02, 0.03, 0.01, 0.01])
    assert written_before_reader_pct([result]) == 50.0


def test_a_saturated_step_says_how_many_cores_it_asked_for() -> None:
    # Given a 300-stream step whose p50 is far over 15 ms on a 2-core machine
    ours, peer = _row("ours", p50=400, p99=2000, pipeline=400), _row("baseline", p99=500)
    ours["cpu_us_per_token"]["load client"] = 60
    ours["cores"] = 2

    # Then the miss names the CPU the step asked for against the machine's
    assert report.latency_line(ours, peer).endswith(
        "MISSED (measured cause: the step's 6000 tokens/s at 400 µs of pipeline CPU each, and the load client's 60, "
        "ask 2.76 cores of this machine's 2: it is saturated)"
    )


def test_a_missed_memory_reading_tells_the_keys_from_the_rest() -> None:
    memory = _memory(120, 230_000) | {"key_bytes_after_window": 190_000}
    memory["deltas_after_window"] = {"used_memory_overhead": 30_000}

    line = report.memory_lines(memory)[1]

    assert line.endswith(
        "MISSED (measured cause: the keys left hold 190000 bytes, 9.5 per token, within it; the other 40000 bytes "
        "belong to no key (30000 of them in used_memory_overhead: key tables, buffers))"
    )
    assert report.memory_lines(_memory(120, 200_000) | {"key_bytes_after_window": 190_000})[1].endswith(": met")


def test_websocket_and_sse_are_pooled_over_their_rounds() -> None:
    rounds = [
        {"events": 100, "measured_events": 90, "measured_s": 5.0, "web_cpu_s": 0.009, "web_cpu_us_per_event": 100.0}
        | {"done": 10, "gaps": 0, "duplicates": 0, "close_codes": [], "compressed": 0, "errors": []},
        {"events": 100, "measured_events": 110, "measured_s": 5.0, "web_cpu_s": 0.022, "web_cpu_us_per_event": 200.0}
        | {"done": 9, "gaps": 1, "duplicates": 0, "close_codes": [1000], "compressed": 0, "errors": ["late"]},
    ]

    both = pooled(rounds)

    # CPU per event over both rounds' events, not the mean of the two rounds' figures
    assert both["web_cpu_us_per_event"] == 155.0
    assert both["each_round_us_per_event"] == [100.0, 200.0]
    assert (both["done"], both["gaps"], both["errors"]) == (9, 1, ["late"])
    # A miss shows each round
    w = _ws(100, 130)
    w["sse"]["each_round_us_per_event"], w["ws"]["each_round_us_per_event"] = [95, 105], [120, 140]
    assert report.ws_line(w).endswith("MISSED (measured cause: each round, SSE [95, 105] µs, WebSocket [120, 140] µs)")


def test_a_second_run_of_a_day_gets_a_report_of_its_own(tmp_path: Path) -> None:
    assert report_name("2026-12-08", tmp_path) == "2026-12-08"
    (tmp_path / "2026-12-08.md").write_text("first")
    assert report_name("2026-12-08", tmp_path) == "2026-12-08-2"
    (tmp_path / "2026-12-08-2.json").write_text("{}")
    assert report_name("2026-12-08", tmp_path) == "2026-12-08-3"

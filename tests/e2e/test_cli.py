"""The ``tokenbridge`` command against the running stack, run as a user runs it: a separate process, piped."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.support.procfile import ROOT
from tests.support.stack import API_KEY, Stack

pytestmark = pytest.mark.e2e

PROMPT = "Hello there,  tokenbridge!\n\tTabs, double  spaces and ünïcödé stay exact. "
SUMMARY = re.compile(r"gen_[0-9a-f]{24} · \d+ tokens · TTFT \d+ ms( · [\d.]+ tokens/s)? · stop\n")


def tokenbridge(
    stack: Stack, *args: str, key: str | None = API_KEY, cwd: Path = ROOT, **env: str
) -> subprocess.CompletedProcess[str]:
    """``python -m tokenbridge.cli --url <web> [--api-key <key>] <args>``, with stdout and stderr piped."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("TOKENBRIDGE_")}
    command = [sys.executable, "-m", "tokenbridge.cli", "--url", stack.base_url]
    if key is not None:
        command += ["--api-key", key]
    return subprocess.run(
        [*command, *args],
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=60,
        cwd=cwd,
        env={**base, "PYTHONPATH": str(ROOT), "PYTHONIOENCODING": "utf-8", **env},
    )


def finished_generation(stack: Stack, prompt: str) -> dict[str, Any]:
    created = stack.create(model="echo", prompt=prompt)
    assert stack.events(created).events[-1].event == "done"
    return created


def test_submit_piped_prints_exactly_the_prompt_and_the_summary_on_stderr(stack: Stack) -> None:
    result = tokenbridge(stack, "submit", PROMPT, "--model", "echo", "--option", "delay_ms=5")

    assert result.returncode == 0, result.stderr
    assert result.stdout == PROMPT
    assert SUMMARY.fullmatch(result.stderr), result.stderr


def test_submit_json_prints_one_event_per_line_ending_with_done(stack: Stack) -> None:
    result = tokenbridge(stack, "submit", PROMPT, "--json", "--max-tokens", "100", "--session", "cli-e2e")

    assert result.returncode == 0, result.stderr
    lines = [orjson.loads(line) for line in result.stdout.splitlines()]
    assert lines[-1]["event"] == "done"
    assert lines[-1]["data"]["finish_reason"] == "stop"
    assert [line["data"]["seq"] for line in lines] == list(range(len(lines)))
    assert {line["generation_id"] for line in lines} == {lines[0]["generation_id"]}
    assert "".join(line["data"]["content"] for line in lines if line["event"] == "token") == PROMPT
    assert result.stderr == ""


def test_tail_replays_a_finished_generation_and_resumes_after_an_event(stack: Stack) -> None:
    # Given a generation that has finished
    created = finished_generation(stack, "one two three four")
    events = stack.events(created).events

    # When it is tailed from the start, after its second event, and after its terminal event
    whole = tokenbridge(stack, "tail", created["id"])
    rest = tokenbridge(stack, "tail", created["id"], "--from", events[1].id)
    nothing = tokenbridge(stack, "tail", created["id"], "--from", events[-1].id)

    # Then each replays exactly what comes after its cursor
    assert (whole.returncode, whole.stdout) == (0, "one two three four")
    assert whole.stderr.startswith(f"{created['id']} · 4 tokens")
    assert (rest.returncode, rest.stdout) == (0, "three four")
    assert (nothing.returncode, nothing.stdout) == (0, "")
    assert "already ended" in nothing.stderr


def test_tail_json_of_a_finished_generation(stack: Stack) -> None:
    created = finished_generation(stack, "a b")

    result = tokenbridge(stack, "tail", created["id"], "--json")

    assert [orjson.loads(line)["event"] for line in result.stdout.splitlines()] == ["token", "token", "done"]


def test_status_reports_the_health_with_its_exit_code(stack: Stack) -> None:
    result = tokenbridge(stack, "status", key=None)
    as_json = tokenbridge(stack, "status", "--json", key=None)

    word = result.stdout.split()[0]
    assert word in ("healthy", "degraded"), result.stdout
    assert result.returncode == (0 if word == "healthy" else 1), result.stdout
    assert "celery" in result.stdout and "consumers" in result.stdout
    assert orjson.loads(as_json.stdout)["status"] in ("healthy", "degraded")
    assert as_json.returncode in (0, 1)


def test_a_wrong_key_is_one_line_and_a_non_zero_exit(stack: Stack) -> None:
    result = tokenbridge(stack, "submit", "Hello", key="not-a-key")

    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert "401 invalid_credentials" in result.stderr
    assert "API key from --api-key" in result.stderr


def test_an_unreachable_server_is_one_line(stack: Stack) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "tokenbridge.cli", "--url", "http://127.0.0.1:9", "tail", "gen_0"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )

    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert "cannot reach" in result.stderr or "gave up" in result.stderr


def test_without_flags_the_key_of_dev_json_is_used(stack: Stack, tmp_path: Path) -> None:
    # Given the file `tokenbridge dev` writes, in the directory the command runs in
    (tmp_path / ".tokenbridge").mkdir()
    (tmp_path / ".tokenbridge" / "dev.json").write_text(orjson.dumps({"api_key": API_KEY}).decode())

    # When the command is given neither --url nor --api-key
    result = subprocess.run(
        [sys.executable, "-m", "tokenbridge.cli", "submit", "from dev.json"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env={
            **{k: v for k, v in os.environ.items() if not k.startswith("TOKENBRIDGE_")},
            "TOKENBRIDGE_URL": stack.base_url,
            "PYTHONPATH": str(ROOT),
        },
    )

    # Then it authenticates with that key
    assert (result.returncode, result.stdout) == (0, "from dev.json"), result.stderr

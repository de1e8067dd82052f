"""tokenbridge.cli against a scripted server: what goes to stdout and stderr, on a terminal and piped."""

from __future__ import annotations

import io
import sys
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest
from tokenbridge_client.client import TokenbridgeClient

from tests.support.scripted_server import ScriptedServer, api_error, chunked, done, frame, run_cli, status, token
from tokenbridge import cli

pytestmark = pytest.mark.usefixtures("no_ambient_config")

Serve = Callable[..., ScriptedServer]
MakeClient = Callable[..., TokenbridgeClient]
CREATED = {"id": "gen_1", "session_id": "ses_1", "status": "queued", "stream_token": "tok"}
ANSWER = chunked(b"retry: 10\n\n", token("1-0", 0, "Hello "), token("2-0", 1, "there"), done("2-1", 2))


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_submit_piped_prints_exactly_the_text_and_the_summary_on_stderr(
    serve: Serve, capsys: pytest.CaptureFixture[str]
) -> None:
    server = serve(status(202, CREATED), ANSWER)

    code, out, err = run_cli(
        capsys, "--url", server.url, "--api-key", "k", "submit", "Hello there", "--max-tokens", "9",
        "--option", "delay_ms=5", "--option", "note=plain text", "--session", "chat-1",
    )  # fmt: skip

    assert (code, out) == (0, "Hello there")
    assert orjson.loads(server.requests[0].body) == {
        "model": "echo",
        "prompt": "Hello there",
        "max_tokens": 9,
        "session_id": "chat-1",
        "options": {"delay_ms": 5, "note": "plain text"},
    }
    assert "\033[" not in err
    assert err.startswith("gen_1 · 2 tokens · TTFT ")
    assert "tokens/s" in err and err.endswith(" · stop\n")


def test_submit_on_a_terminal_ends_the_line_and_dims_the_summary(serve: Serve, monkeypatch: pytest.MonkeyPatch) -> None:
    server = serve(status(202, CREATED), ANSWER)
    out, err = Terminal(), Terminal()
    monkeypatch.setattr(sys, "stdout", out)
    monkeypatch.setattr(sys, "stderr", err)

    code = cli.main(["--url", server.url, "--api-key", "k", "submit", "Hello there"])

    assert (code, out.getvalue()) == (0, "Hello there\n")
    assert err.getvalue().startswith("\033[2mgen_1 · 2 tokens")
    assert "\033[32mstop\033[0m" in err.getvalue()


def test_no_color_turns_colour_off_on_a_terminal(serve: Serve, monkeypatch: pytest.MonkeyPatch) -> None:
    server = serve(status(202, CREATED), ANSWER)
    err = Terminal()
    monkeypatch.setattr(sys, "stdout", Terminal())
    monkeypatch.setattr(sys, "stderr", err)
    monkeypatch.setenv("NO_COLOR", "1")

    cli.main(["--url", server.url, "--api-key", "k", "submit", "Hello there"])

    assert "\033[" not in err.getvalue()


def test_submit_json_prints_one_object_per_event(serve: Serve, capsys: pytest.CaptureFixture[str]) -> None:
    server = serve(status(202, CREATED), ANSWER)

    code, out, err = run_cli(capsys, "--url", server.url, "--api-key", "k", "submit", "Hello there", "--json")

    lines = [orjson.loads(line) for line in out.splitlines()]
    assert [(line["generation_id"], line["id"], line["event"]) for line in lines] == [
        ("gen_1", "1-0", "token"),
        ("gen_1", "2-0", "token"),
        ("gen_1", "2-1", "done"),
    ]
    assert lines[0]["data"]["content"] == "Hello "
    assert (code, err) == (0, "")


def test_a_restart_is_announced_and_a_reset_that_extends_the_text_prints_only_the_rest(
    serve: Serve, capsys: pytest.CaptureFixture[str]
) -> None:
    events = chunked(
        token("1-0", 0, "Hel"),
        frame("2-0", "restart", {"seq": 1, "reason": "worker_lost"}),
        token("3-0", 2, "Hello "),
        frame("4-0", "reset", {"text": "Hello there", "next_seq": 5}),
        token("5-0", 5, "!"),
        done("5-1", 6),
    )
    server = serve(events)

    code, out, err = run_cli(capsys, "--url", server.url, "tail", "gen_1")

    # Piped output cannot take text back: the discarded "Hel" stays, and stderr says so.
    assert (code, out) == (0, "HelHello there!")
    assert "restarted (worker_lost); text so far discarded" in err


def test_an_error_event_exits_1_with_one_line(serve: Serve, capsys: pytest.CaptureFixture[str]) -> None:
    failed = frame("1-1", "error", {"seq": 1, "code": "provider_error", "message": "upstream died"})
    server = serve(chunked(token("1-0", 0, "Hi"), failed))

    code, out, err = run_cli(capsys, "--url", server.url, "tail", "gen_1")

    assert (code, out) == (1, "Hi")
    assert err == "tokenbridge: gen_1 failed: upstream died (provider_error)\n"


def test_tail_from_the_terminal_event_says_it_had_ended(serve: Serve, capsys: pytest.CaptureFixture[str]) -> None:
    server = serve(status(204))

    code, out, err = run_cli(capsys, "--url", server.url, "tail", "gen_1", "--from", "2-1")

    assert (code, out) == (0, "")
    assert err == "gen_1: nothing after 2-1; it had already ended\n"
    assert server.requests[0].headers["last-event-id"] == "2-1"


def test_a_validation_error_is_one_line_with_the_models_available(
    serve: Serve, capsys: pytest.CaptureFixture[str]
) -> None:
    details = [{"field": "model", "message": "Unknown model 'gpt'.", "available": ["echo", "synthetic"]}]
    server = serve(
        api_error(422, "validation_failed", "The request is not valid: model: Unknown model 'gpt'.", details)
    )

    code, out, err = run_cli(capsys, "--url", server.url, "submit", "Hi", "--model", "gpt")

    assert (code, out) == (1, "")
    assert err == (
        "tokenbridge: The request is not valid: model: Unknown model 'gpt'. (422 validation_failed);"
        " available models: echo, synthetic\n"
    )


def test_401_without_a_key_says_how_to_give_one(serve: Serve, capsys: pytest.CaptureFixture[str]) -> None:
    server = serve(api_error(401, "missing_credentials", "No credentials."))

    code, _, err = run_cli(capsys, "--url", server.url, "submit", "Hi")

    assert code == 1
    assert "pass --api-key or set TOKENBRIDGE_API_KEY" in err
    assert "authorization" not in server.requests[0].headers


def test_the_key_comes_from_the_environment_then_from_dev_json(
    serve: Serve, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    server = serve(api_error(401, "invalid_credentials", "Invalid API key."))
    (tmp_path / ".tokenbridge").mkdir()
    (tmp_path / ".tokenbridge" / "dev.json").write_text('{"api_key": "dev-key"}')
    monkeypatch.setenv("TOKENBRIDGE_URL", server.url)

    _, _, from_file = run_cli(capsys, "submit", "Hi")
    monkeypatch.setenv("TOKENBRIDGE_API_KEY", "env-key")
    _, _, from_env = run_cli(capsys, "submit", "Hi")
    _, _, from_flag = run_cli(capsys, "submit", "Hi", "--api-key", "flag-key")

    assert [r.headers["authorization"] for r in server.requests] == [
        "Bearer dev-key",
        "Bearer env-key",
        "Bearer flag-key",
    ]
    assert from_file.endswith("; API key from .tokenbridge/dev.json\n")
    assert from_env.endswith("; API key from TOKENBRIDGE_API_KEY\n")
    assert from_flag.endswith("; API key from --api-key\n")


def test_ctrl_c_while_streaming_cancels_the_generation(
    serve: Serve, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    server = serve(status(202, CREATED), ANSWER, status(202, {"id": "gen_1", "status": "cancelling"}))

    def interrupted(self: object, event: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(cli._Reader, "handle", interrupted)

    code, _, err = run_cli(capsys, "--url", server.url, "submit", "Hello there")

    assert code == 130
    assert (server.requests[2].method, server.requests[2].path) == ("POST", "/v1/generations/gen_1/cancel")
    assert err == "tokenbridge: cancelled gen_1\n"


HEALTHY = {"status": "healthy", "checks": {"redis": {"status": "healthy", "latency_ms": 0.3}}}
DEGRADED = {
    "status": "degraded",
    "checks": {
        "consumers": {"status": "degraded", "alive": 0, "lag": None, "problems": ["no consumer worker is alive"]}
    },
}
UNHEALTHY = {"status": "unhealthy", "checks": {"redis": {"status": "unhealthy", "error": "refused"}}}


@pytest.mark.parametrize(
    ("answer", "code", "first_line"),
    [
        (status(200, HEALTHY), 0, "healthy"),
        (status(200, DEGRADED), 1, "degraded"),
        (status(503, UNHEALTHY), 2, "unhealthy"),
    ],
)
def test_status_exit_code_follows_the_health(
    serve: Serve, capsys: pytest.CaptureFixture[str], answer: object, code: int, first_line: str
) -> None:
    server = serve(answer)

    exit_code, out, _ = run_cli(capsys, "status", "--url", server.url)

    assert exit_code == code
    assert out.splitlines()[0] == f"{first_line}  {server.url}"
    if first_line == "degraded":
        assert out.splitlines()[1:] == [
            "  consumers  degraded  alive=0",
            "             - no consumer worker is alive",
        ]


def test_status_json_prints_the_body_and_unreachable_exits_2(serve: Serve, capsys: pytest.CaptureFixture[str]) -> None:
    body = {"status": "healthy", "checks": {}}
    server = serve(status(200, body))

    code, out, _ = run_cli(capsys, "--json", "status", "--url", server.url)
    assert (code, orjson.loads(out)) == (0, body)

    code, out, err = run_cli(capsys, "status", "--url", "http://127.0.0.1:9")
    assert (code, out) == (2, "")
    assert err.startswith("tokenbridge: cannot reach http://127.0.0.1:9/readyz") and err.count("\n") == 1


def test_a_bad_option_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        cli.main(["submit", "Hi", "--option", "no-equals-sign"])

    assert caught.value.code == 2
    assert "expected key=value" in capsys.readouterr().err


def test_a_burst_of_tokens_shows_no_rate(serve: Serve, capsys: pytest.CaptureFixture[str]) -> None:
    # Given a model that produced its tokens all at once (echo)
    burst = chunked(
        frame("1-0", "token", {"seq": 0, "content": "a ", "ts": 5.0}),
        frame("1-1", "token", {"seq": 1, "content": "b", "ts": 5.0001}),
        done("1-2", 2),
    )
    server = serve(status(202, CREATED), burst)
    # When it is submitted
    code, out, err = run_cli(capsys, "--url", server.url, "--api-key", "k", "submit", "a b")
    # Then the summary shows no meaningless tokens-per-second figure
    assert (code, out) == (0, "a b")
    assert "tokens/s" not in err and err.endswith(" · stop\n")

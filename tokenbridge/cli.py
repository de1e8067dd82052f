"""The ``tokenbridge`` command: ``dev`` runs the stack; the other commands talk to one over HTTP."""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any, TextIO

import orjson
from tokenbridge_client.client import (
    Event,
    TokenbridgeAPIError,
    TokenbridgeClient,
    TokenbridgeClientError,
    Transcript,
)

from bridge.version import VERSION

DEFAULT_URL = "http://127.0.0.1:8000"
DEV_HOST = "127.0.0.1"  # `tokenbridge dev` is reachable from this machine only unless told otherwise
# Exit codes of `status`: the overall health, 2 also when the server cannot be reached.
_HEALTH_EXIT = {"healthy": 0, "degraded": 1}


class _Style:
    """ANSI colour when the stream is a terminal (and NO_COLOR is unset), plain text otherwise."""

    def __init__(self, stream: TextIO) -> None:
        self.on = stream.isatty() and "NO_COLOR" not in os.environ and os.environ.get("TERM") != "dumb"

    def __call__(self, text: str, *codes: str) -> str:
        return f"\033[{';'.join(codes)}m{text}\033[0m" if self.on and codes else text


DIM, BOLD, RED, GREEN, YELLOW = "2", "1", "31", "32", "33"
_STATUS_COLOUR = {"healthy": GREEN, "degraded": YELLOW, "unhealthy": RED}


# -- configuration ---------------------------------------------------------------------------------


@dataclass
class _Target:
    url: str
    api_key: str | None
    key_source: str


def _target(args: argparse.Namespace) -> _Target:
    url = args.url or os.environ.get("TOKENBRIDGE_URL") or DEFAULT_URL
    if args.api_key:
        return _Target(url, args.api_key, "--api-key")
    if os.environ.get("TOKENBRIDGE_API_KEY"):
        return _Target(url, os.environ["TOKENBRIDGE_API_KEY"], "TOKENBRIDGE_API_KEY")
    from tokenbridge.devserver import STATE_DIR

    dev_file = STATE_DIR / "dev.json"
    try:
        key = orjson.loads(dev_file.read_bytes()).get("api_key")
    except (OSError, orjson.JSONDecodeError, AttributeError):
        key = None
    if isinstance(key, str) and key:
        return _Target(url, key, str(dev_file))
    return _Target(url, None, "")


def _option(text: str) -> tuple[str, Any]:
    """``key=value``; the value is read as JSON when it is valid JSON (numbers, booleans), else as a string."""
    key, equals, value = text.partition("=")
    if not equals or not key:
        raise argparse.ArgumentTypeError(f"expected key=value, got {text!r}")
    try:
        return key, orjson.loads(value)
    except orjson.JSONDecodeError:
        return key, value


def _describe(exc: TokenbridgeClientError, target: _Target) -> str:
    """One line for an error, with what the user can do about it."""
    if not isinstance(exc, TokenbridgeAPIError):
        return str(exc)
    text = f"{exc.message} ({exc.status} {exc.code})"
    if isinstance(exc.details, list):
        available = [d["available"] for d in exc.details if isinstance(d, dict) and "available" in d]
        if available and isinstance(available[0], list):
            text += f"; available models: {', '.join(map(str, available[0]))}"
    if exc.status == 401:
        text += (
            f"; API key from {target.key_source}"
            if target.api_key
            else "; pass --api-key or set TOKENBRIDGE_API_KEY (or run `tokenbridge dev` here)"
        )
    return text


# -- submit and tail -------------------------------------------------------------------------------


@dataclass
class _Reader:
    """Writes a generation's events: the text to ``out`` as it arrives, notices and the summary to ``err``."""

    generation_id: str
    out: TextIO
    err: TextIO
    as_json: bool
    submitted_at: float | None = None  # monotonic time of the POST, for the time to first token
    transcript: Transcript = field(default_factory=Transcript)
    first_token_at: float | None = None
    token_ts: list[float] = field(default_factory=list)  # producer times of the tokens since the last restart
    terminal: Event | None = None
    at_line_start: bool = True

    def handle(self, event: Event) -> None:
        if self.as_json:
            line = {"generation_id": self.generation_id, "id": event.id, "event": event.event, "data": event.data}
            self.out.write(orjson.dumps(line).decode() + "\n")
        else:
            self._show(event)
        self.out.flush()
        if event.event == "token":
            self.first_token_at = self.first_token_at or time.monotonic()
            if isinstance(event.data.get("ts"), int | float):
                self.token_ts.append(float(event.data["ts"]))
        elif event.event in ("restart", "reset"):
            self.token_ts.clear()
        if event.terminal:
            self.terminal = event

    def _show(self, event: Event) -> None:
        shown = self.transcript.text
        text = self.transcript.apply(event)
        if event.event == "token":
            self._write(text[len(shown) :])
        elif event.event == "restart":
            self._notice(
                f"the generation restarted ({event.data.get('reason', 'no reason given')}); text so far discarded"
            )
        elif event.event == "reset":
            if text.startswith(shown):
                self._write(text[len(shown) :])
            else:
                self._notice("the text was replaced (the resume point was trimmed)")
                self._write(text)

    def _write(self, text: str) -> None:
        if text:
            self.out.write(text)
            self.at_line_start = text.endswith("\n")

    def _notice(self, message: str) -> None:
        self.end_line()
        self.err.write(_Style(self.err)(f"tokenbridge: {message}", YELLOW) + "\n")
        self.err.flush()

    def end_line(self) -> None:
        # On a terminal, what follows the text starts on its own line; piped output stays the exact text.
        if not self.at_line_start and self.out.isatty():
            self.out.write("\n")
            self.out.flush()
            self.at_line_start = True

    def finish(self, *, after: str | None) -> int:
        self.end_line()
        style = _Style(self.err)
        if self.terminal is None:
            if not self.as_json:
                self.err.write(style(f"{self.generation_id}: nothing after {after}; it had already ended", DIM) + "\n")
            return 0
        data = self.terminal.data
        if self.terminal.event == "error":
            message = f"{data.get('message', 'no message')} ({data.get('code', 'error')})"
            self.err.write(style(f"tokenbridge: {self.generation_id} failed: {message}", RED) + "\n")
            return 1
        if self.terminal.event == "cancelled":
            self.err.write(style(f"tokenbridge: {self.generation_id} was cancelled", YELLOW) + "\n")
            return 1
        if not self.as_json:
            self.err.write(self._summary(style) + "\n")
        return 0

    def _summary(self, style: _Style) -> str:
        usage = self.terminal.data.get("usage") if self.terminal else None
        tokens = usage.get("completion_tokens") if isinstance(usage, dict) else None
        parts = [self.generation_id, f"{tokens if tokens is not None else len(self.token_ts)} tokens"]
        if self.submitted_at is not None and self.first_token_at is not None:
            parts.append(f"TTFT {(self.first_token_at - self.submitted_at) * 1000:.0f} ms")
        if len(self.token_ts) > 1 and self.token_ts[-1] - self.token_ts[0] >= _MIN_RATE_SPAN_S:
            # Producer time: the pace of the model, not of this connection. (A burst has no pace to show.)
            parts.append(f"{(len(self.token_ts) - 1) / (self.token_ts[-1] - self.token_ts[0]):.1f} tokens/s")
        line = style(" · ".join(parts), DIM)
        reason = str(self.terminal.data.get("finish_reason", "")) if self.terminal else ""
        if reason:
            line += style(" · ", DIM) + style(reason, GREEN if reason == "stop" else YELLOW)
        return line


_MIN_RATE_SPAN_S = 0.1


def _read(client: TokenbridgeClient, reader: _Reader, *, after: str | None) -> int:
    try:
        for event in client.stream(reader.generation_id, last_event_id=after):
            reader.handle(event)
    except (TokenbridgeClientError, KeyboardInterrupt):
        reader.end_line()
        raise
    return reader.finish(after=after)


def _submit(args: argparse.Namespace, client: TokenbridgeClient) -> int:
    prompt = sys.stdin.read() if args.prompt == "-" else args.prompt
    submitted_at = time.monotonic()
    created = client.submit(
        args.model,
        prompt,
        max_tokens=args.max_tokens,
        session_id=args.session,
        options=dict(args.option) or None,
    )
    reader = _Reader(str(created["id"]), sys.stdout, sys.stderr, args.json, submitted_at=submitted_at)
    try:
        return _read(client, reader, after=None)
    except KeyboardInterrupt:
        # Ctrl-C means "stop": without the cancel the generation would run on with nobody reading.
        try:
            client.cancel(reader.generation_id)
            message = f"cancelled {reader.generation_id}"
        except TokenbridgeClientError as exc:
            message = f"stopped reading {reader.generation_id}, which could not be cancelled: {exc}"
        reader.end_line()
        sys.stderr.write(f"tokenbridge: {message}\n")
        return 130


def _tail(args: argparse.Namespace, client: TokenbridgeClient) -> int:
    reader = _Reader(args.generation_id, sys.stdout, sys.stderr, args.json)
    return _read(client, reader, after=args.from_id)


# -- status ----------------------------------------------------------------------------------------


def _status(args: argparse.Namespace, client: TokenbridgeClient) -> int:
    body = client.status()
    overall = str(body.get("status"))
    if args.json:
        sys.stdout.write(orjson.dumps(body, option=orjson.OPT_INDENT_2).decode() + "\n")
        return _HEALTH_EXIT.get(overall, 2)
    style = _Style(sys.stdout)
    lines = [f"{style(overall, BOLD, _STATUS_COLOUR.get(overall, RED))}  {client.base_url}"]
    checks = body.get("checks")
    for name, check in (checks if isinstance(checks, dict) else {}).items():
        if not isinstance(check, dict):
            continue
        state = str(check.get("status", "?"))
        facts = " ".join(
            f"{k}={v}" for k, v in check.items() if k not in ("status", "problems", "error") and v is not None
        )
        lines.append(f"  {name:<10} {style(f'{state:<9}', _STATUS_COLOUR.get(state, RED))} {style(facts, DIM)}")
        lines.extend(f"             - {problem}" for problem in check.get("problems") or [])
        if check.get("error"):
            lines.append(f"             error: {check['error']}")
    sys.stdout.write("\n".join(lines) + "\n")
    return _HEALTH_EXIT.get(overall, 2)


# -- cancel and models ----------------------------------------------------------------------------


def _cancel(args: argparse.Namespace, client: TokenbridgeClient) -> int:
    body = client.cancel(args.generation_id)
    message = f"cancelling {args.generation_id}: its stream ends with a cancelled event"
    sys.stdout.write((orjson.dumps(body).decode() if args.json else message) + "\n")
    return 0


def _models(args: argparse.Namespace, client: TokenbridgeClient) -> int:
    models = client.models()
    if args.json:
        sys.stdout.write(orjson.dumps({"object": "list", "data": models}, option=orjson.OPT_INDENT_2).decode() + "\n")
        return 0
    style = _Style(sys.stdout)
    width = max((len(str(m.get("id", ""))) for m in models), default=0)
    lines = [f"{m.get('id', '')!s:<{width}}  {style(str(m.get('owned_by', '')), DIM)}" for m in models]
    sys.stdout.write("\n".join(lines) + "\n" if lines else "no models\n")
    return 0


# -- dead letters ----------------------------------------------------------------------------------


def _dead_letters(args: argparse.Namespace, client: TokenbridgeClient) -> int:
    if args.action == "list":
        body = client.dead_letters(limit=args.limit)
        if args.json:
            sys.stdout.write(orjson.dumps(body, option=orjson.OPT_INDENT_2).decode() + "\n")
            return 0
        style = _Style(sys.stdout)
        letters = body.get("data") or []
        lines = [f"{body.get('total', len(letters))} dead letters" + (f", newest {len(letters)}:" if letters else "")]
        for letter in letters:
            held = style("held", BOLD, RED) if letter.get("held") else style("ended", DIM)
            lines.append(f"  {letter['id']}  {held}  {letter['generation_id']}  entry {letter['entry_id']}")
            lines.append(f"      {style(str(letter.get('error', '')), DIM)}")
        sys.stdout.write("\n".join(lines) + "\n")
        return 0
    if not args.id:
        raise SystemExit(f"tokenbridge dead-letters {args.action}: give the dead letter's id")
    if args.action == "replay":
        body = client.replay_dead_letter(args.id)
        message = f"replaying {args.id}: generation {body.get('generation_id')} continues if it goes through"
    else:
        body = client.drop_dead_letter(args.id)
        ended = f"; generation {body.get('generation_id')} ends with poison_entry" if body.get("ended") else ""
        message = f"dropped {args.id}{ended}"
    sys.stdout.write((orjson.dumps(body).decode() if args.json else message) + "\n")
    return 0


# -- entry point -----------------------------------------------------------------------------------


# Long: one declarative table of every command and flag, read top to bottom.
def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tokenbridge", description="Relay LLM tokens through Redis Streams.")
    parser.add_argument("--version", action="version", version=f"tokenbridge {VERSION}")
    # Accepted before or after the command; SUPPRESS keeps a subcommand from resetting what was given before it.
    connection = argparse.ArgumentParser(add_help=False)
    connection.add_argument("--url", default=argparse.SUPPRESS, help=f"server (TOKENBRIDGE_URL, else {DEFAULT_URL})")
    connection.add_argument(
        "--api-key",
        default=argparse.SUPPRESS,
        help="API key (TOKENBRIDGE_API_KEY, else the key of .tokenbridge/dev.json that `tokenbridge dev` wrote)",
    )
    connection.add_argument(
        "--json", action="store_true", default=argparse.SUPPRESS, help="one JSON object per event (status: the body)"
    )
    parser.add_argument("--url", help=f"server (TOKENBRIDGE_URL, else {DEFAULT_URL})")
    parser.add_argument("--api-key", help="API key (TOKENBRIDGE_API_KEY, else the key in .tokenbridge/dev.json)")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    commands = parser.add_subparsers(dest="command", required=True)

    dev = commands.add_parser("dev", help="run embedded Redis, web, worker, consumer and Flower (Ctrl-C stops)")
    dev.add_argument("--port", type=int, default=8000, help="port of web; Flower gets port + 300 (default 8000)")
    dev.add_argument(
        "--host",
        default=os.environ.get("TOKENBRIDGE_DEV_HOST", DEV_HOST),
        help=f"address web and Flower bind to (TOKENBRIDGE_DEV_HOST, else {DEV_HOST}; 0.0.0.0 for every interface)",
    )
    dev.add_argument("--procfile", default="Procfile", help="the Procfile to run (default ./Procfile)")

    submit = commands.add_parser(
        "submit", parents=[connection], help="submit a prompt and stream the answer (Ctrl-C cancels it)"
    )
    submit.add_argument("prompt", help="the prompt; - reads it from stdin")
    submit.add_argument("--model", default="echo", help="a model of GET /v1/models (default echo)")
    submit.add_argument("--max-tokens", type=int, metavar="N", help="stop after N tokens (finish_reason length)")
    submit.add_argument(
        "--option",
        type=_option,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a model option, e.g. delay_ms=50 (repeatable)",
    )
    submit.add_argument("--session", metavar="ID", help="session id to file the generation under")
    submit.set_defaults(run=_submit)

    tail = commands.add_parser("tail", parents=[connection], help="follow or replay one generation")
    tail.add_argument("generation_id", metavar="ID", help="the generation's id (gen_...)")
    tail.add_argument("--from", dest="from_id", metavar="EVENT_ID", help="only the events after this event id")
    tail.set_defaults(run=_tail)

    status = commands.add_parser("status", parents=[connection], help="health of the server (/readyz)")
    status.set_defaults(run=_status)

    dead = commands.add_parser(
        "dead-letters", parents=[connection], help="list, replay or drop dead letters (needs an admin key)"
    )
    dead.add_argument("action", choices=["list", "replay", "drop"], help="what to do")
    dead.add_argument("id", nargs="?", help="the dead letter's id (replay, drop)")
    dead.add_argument("--limit", type=int, default=20, help="how many to list (newest first)")
    dead.set_defaults(run=_dead_letters)

    cancel = commands.add_parser("cancel", parents=[connection], help="cancel a generation")
    cancel.add_argument("generation_id", metavar="ID", help="the generation's id (gen_...)")
    cancel.set_defaults(run=_cancel)

    models = commands.add_parser("models", parents=[connection], help="list the models of the server (/v1/models)")
    models.set_defaults(run=_models)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "dev":
        from tokenbridge.devserver import run_dev

        return run_dev(port=args.port, procfile=args.procfile, host=args.host)
    target = _target(args)
    try:
        with TokenbridgeClient(target.url, target.api_key) as client:
            code: int = args.run(args, client)
            return code
    except TokenbridgeClientError as exc:
        sys.stderr.write(_Style(sys.stderr)(f"tokenbridge: {_describe(exc, target)}", RED) + "\n")
        # `status` says 2 for "no healthy server here", whatever the reason.
        return 2 if args.command == "status" else 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader of stdout went away (`| head`): stop quietly, without a traceback at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    sys.exit(main())

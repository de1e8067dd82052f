"""What gunicorn refuses itself, before the app runs, is answered in JSON like every other error."""

from __future__ import annotations

import socket
from types import SimpleNamespace
from typing import Any

import orjson
import pytest
from gunicorn.http import errors  # type: ignore[import-untyped]

from app.gunicorn_errors import answer_in_json, answer_to

CFG = SimpleNamespace(limit_request_line=4094, limit_request_fields=100, limit_request_field_size=8190)


@pytest.mark.parametrize(
    ("exc", "status", "code"),
    [
        (errors.LimitRequestLine(9000, 4094), 414, "uri_too_long"),
        (errors.LimitRequestHeaders("too many"), 431, "header_fields_too_large"),
        (errors.InvalidRequestLine("GET /v1?token=secret"), 400, "bad_request"),
        (errors.InvalidHTTPVersion("HTTP/9.9"), 400, "bad_request"),
        (errors.UnsupportedTransferCoding("gzip"), 501, "not_implemented"),
        (RuntimeError("boom"), 500, "internal_error"),
    ],
)
def test_each_refusal_has_its_status_and_code(exc: Exception, status: int, code: str) -> None:
    assert answer_to(exc, CFG)[::2] == (status, code)


class _Log:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def warning(self, message: str, *args: Any) -> None:
        self.lines.append(message % args)

    exception = debug = warning

    def access(self, *args: Any) -> None:
        pass


def test_the_answer_is_whole_json_and_the_client_reads_it_all() -> None:
    # Given a worker that answers in JSON, and a client that sent more than the server read
    worker = SimpleNamespace(cfg=CFG, log=_Log())
    answer_in_json(worker)
    server, client = socket.socketpair()
    client.sendall(b"GET /v1/" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    server.recv(100)  # gunicorn read part of the request line before it refused it
    # When the worker refuses the request
    worker.handle_error(None, server, ("127.0.0.1", 1234), errors.LimitRequestLine(9000, 4094))
    server.close()
    # Then the client reads a JSON 414 to its end (the server read the rest: no reset)
    data = b""
    with client:
        while chunk := client.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 414 URI Too Long\r\n") and b"Content-Type: application/json" in head
    assert orjson.loads(body) == {
        "error": {"code": "uri_too_long", "message": "The request line is longer than 4094 bytes.", "details": None}
    }
    # And the log names the kind of refusal, not the request line (which may hold a ?token=)
    assert worker.log.lines == ["Invalid request from ip=127.0.0.1: LimitRequestLine (414)"]


class _Worker:
    """The parts of a gunicorn worker that ``log_unanswered`` wraps: an app, and the handling of a request."""

    def __init__(self, fails: BaseException, *, after_answer: bool) -> None:
        self.log = _Log()
        self.fails, self.after_answer = fails, after_answer
        self.wsgi = lambda environ, start_response: [start_response("200 OK", []), b"{}"][1:]

    def handle_request(self, listener_name: Any, req: Any, sock: Any, addr: Any) -> None:
        if self.after_answer:
            self.wsgi({}, lambda *args: None)  # the app began its answer
        raise self.fails


@pytest.mark.parametrize(
    ("fails", "after_answer", "logged"),
    [
        (ConnectionResetError(104, "Connection reset by peer"), False, "ConnectionResetError (errno 104)"),
        (BrokenPipeError(32, "Broken pipe"), True, None),  # a client that left mid-stream: not web's doing
    ],
)
def test_a_request_closed_without_an_answer_is_logged_with_its_reason(
    fails: BaseException, after_answer: bool, logged: str | None
) -> None:
    from app.gunicorn_errors import log_unanswered

    # Given a worker whose handling of a request ends on a socket error, before or after the app answered
    worker = _Worker(fails, after_answer=after_answer)
    log_unanswered(worker)
    req = SimpleNamespace(method="GET", path="/v1/generations/gen_1/events")
    # When it handles the request
    with pytest.raises(OSError):
        worker.handle_request(None, req, None, None)
    # Then a request that got nothing is logged with its reason (the path, never the query), and only such a one
    expected = [f"Closed GET /v1/generations/gen_1/events without an answer: {logged}."] if logged else []
    assert worker.log.lines == expected

"""The errors gunicorn answers itself, before the app runs, as JSON like every other error (not its HTML page); and a
warning for every request it closes without an answer.

gunicorn refuses a request it cannot parse, or one over its limits (a request line over ``limit_request_line``,
4094 bytes: 414; headers over ``limit_request_fields`` or ``limit_request_field_size``: 431), with a page of HTML.
``gunicorn.conf.py`` puts ``handle_error`` in place of the worker's own, once per worker (``post_worker_init``).

A socket error (a reset, a broken pipe) raised while a request is handled ends its connection with a debug line
at most, answered or not. ``log_unanswered`` logs the requests that got nothing, and why.
"""

from __future__ import annotations

import functools
import socket
import ssl
import threading
import time
from datetime import datetime, timedelta
from typing import Any

import orjson
from gunicorn.http import errors  # type: ignore[import-untyped]
from gunicorn.http.wsgi import Response, default_environ  # type: ignore[import-untyped]

# After the answer, what the client still sends is read and dropped for this long (and at most this much): closing a
# socket with unread data makes the kernel send a reset, which can destroy the answer before the client reads it.
LINGER_S = 1.0
LINGER_BYTES = 1 << 20

_LIMITS = ("limit_request_line", "limit_request_fields", "limit_request_field_size")
_INTERNAL = (500, "Internal Server Error", "internal_error", "An internal error occurred.")

# The first class that matches answers; anything else is an internal error.
_ANSWERS: tuple[tuple[tuple[type[BaseException], ...], tuple[int, str, str, str]], ...] = (
    ((errors.InvalidResponseHeader, errors.InvalidResponseHeaderName, errors.ConfigurationProblem), _INTERNAL),
    (
        (errors.LimitRequestLine,),
        (414, "URI Too Long", "uri_too_long", "The request line is longer than {limit_request_line} bytes."),
    ),
    (
        (errors.LimitRequestHeaders,),
        (
            431,
            "Request Header Fields Too Large",
            "header_fields_too_large",
            "The request has more than {limit_request_fields} headers, or one over {limit_request_field_size} bytes.",
        ),
    ),
    (
        (errors.UnsupportedTransferCoding,),
        (501, "Not Implemented", "not_implemented", "The request's Transfer-Encoding is not supported."),
    ),
    (
        (errors.ExpectationFailed,),
        (417, "Expectation Failed", "expectation_failed", "The request's Expect header is not supported."),
    ),
    ((errors.ForbiddenProxyRequest, ssl.SSLError), (403, "Forbidden", "forbidden", "The request is not allowed.")),
    ((errors.ParseException,), (400, "Bad Request", "bad_request", "The request is not valid HTTP/1.1.")),
)


def answer_in_json(worker: Any) -> None:
    """Make ``worker`` (a gunicorn worker) answer the requests it refuses itself with a JSON error."""
    worker.handle_error = functools.partial(handle_error, worker)


def log_unanswered(worker: Any) -> None:
    """Make ``worker`` log a warning for each request whose connection ends before the app began an answer, naming the
    request's method and path (never its query) and the reason."""
    state = threading.local()  # one request at a time per greenlet (gevent patches threading first)
    app, handle_request = worker.wsgi, worker.handle_request

    def wsgi(environ: dict[str, Any], start_response: Any) -> Any:
        def start(*args: Any) -> Any:
            state.answered = True
            return start_response(*args)

        return app(environ, start)

    @functools.wraps(handle_request)
    def handling(listener_name: Any, req: Any, sock: Any, addr: Any) -> Any:
        state.answered = False
        try:
            return handle_request(listener_name, req, sock, addr)
        except OSError as exc:  # gunicorn answers other errors itself (handle_error), or a response had begun
            if not state.answered:
                reason = f"{type(exc).__name__}" + (f" (errno {exc.errno})" if getattr(exc, "errno", None) else "")
                worker.log.warning("Closed %s %s without an answer: %s.", req.method, req.path, reason)
            raise

    worker.wsgi, worker.handle_request = wsgi, handling


def answer_to(exc: BaseException, cfg: Any) -> tuple[int, str, str, str]:
    """Status, reason phrase, error code and message of the answer to ``exc``."""
    for classes, (status, reason, code, message) in _ANSWERS:
        if isinstance(exc, classes):
            limits = {name: getattr(cfg, name, "?") for name in _LIMITS}
            return status, reason, code, message.format(**limits)
    return _INTERNAL


def error_bytes(status: int, reason: str, code: str, message: str) -> bytes:
    """A whole HTTP/1.1 answer that closes the connection, its body the JSON error of every other answer."""
    body = orjson.dumps({"error": {"code": code, "message": message, "details": None}})
    head = (
        f"HTTP/1.1 {status} {reason}\r\nConnection: close\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode("latin-1") + body


def handle_error(worker: Any, req: Any, client: socket.socket, addr: Any, exc: BaseException) -> None:
    """gunicorn's ``Worker.handle_error``, answering in JSON.

    The log line names the kind of error, not its text, which may quote the request line (and a ``?token=``).
    """
    started = datetime.now()
    addr = addr or ("", -1)  # a unix socket
    status, reason, code, message = answer_to(exc, worker.cfg)
    if status == 500:
        worker.log.exception("Error handling request %s", getattr(req, "path", "(no request line read)"))
    else:
        worker.log.warning("Invalid request from ip=%s: %s (%s)", addr[0], type(exc).__name__, status)
    if not req and isinstance(exc, (errors.InvalidHeader, errors.InvalidHeaderName)):
        req = getattr(exc, "req", None)  # as gunicorn does, for the access log
    if req is not None:
        _log_access(worker, req, client, addr, f"{status} {reason}", len(message), datetime.now() - started)
    try:
        client.sendall(error_bytes(status, reason, code, message))
        _linger(client)
    except (OSError, ValueError):
        worker.log.debug("Failed to send error message.")


def _log_access(worker: Any, req: Any, client: Any, addr: Any, status: str, length: int, took: timedelta) -> None:
    environ = default_environ(req, client, worker.cfg)
    environ["REMOTE_ADDR"], environ["REMOTE_PORT"] = addr[0], str(addr[1])
    response = Response(req, client, worker.cfg)
    response.status, response.response_length = status, length
    worker.log.access(response, req, environ, took)


def _linger(client: socket.socket) -> None:
    """Half-close, then read what the client still sends until it closes (or LINGER_S / LINGER_BYTES pass)."""
    client.shutdown(socket.SHUT_WR)
    deadline = time.monotonic() + LINGER_S
    drained = 0
    while drained < LINGER_BYTES:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return
        client.settimeout(remaining)
        try:
            chunk = client.recv(65536)
        except TimeoutError:
            return
        if not chunk:
            return
        drained += len(chunk)

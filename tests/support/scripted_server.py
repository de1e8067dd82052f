"""A scripted HTTP server for the client and command-line tests: the n-th request gets the n-th answer."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import orjson
import pytest

from tokenbridge import cli

Responder = Callable[[BaseHTTPRequestHandler], None]


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    at: float


class ScriptedServer:
    """A ThreadingHTTPServer that answers the n-th request with the n-th responder (the last one repeats)."""

    def __init__(self, *responders: Responder) -> None:
        self.responders = list(responders)
        self.requests: list[Request] = []
        self.released = threading.Event()  # set at exit: unblocks responders that hold a response open
        scripted = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                headers = {name.lower(): value for name, value in self.headers.items()}
                scripted.requests.append(Request(self.command, self.path, headers, body, time.monotonic()))
                index = min(len(scripted.requests), len(scripted.responders)) - 1
                scripted.responders[index](self)

            do_GET = do_POST = _answer

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        # A client that hangs up mid-response makes the handler's write fail; that is expected here.
        self.server.handle_error = lambda request, client_address: None  # type: ignore[method-assign]
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> ScriptedServer:
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.released.set()
        self.server.shutdown()
        self.server.server_close()


# -- responders ------------------------------------------------------------------------------------


def frame(event_id: str, event: str, data: dict[str, Any]) -> bytes:
    return b"id: %s\nevent: %s\ndata: %s\n\n" % (event_id.encode(), event.encode(), orjson.dumps(data))


def token(event_id: str, seq: int, content: str) -> bytes:
    return frame(event_id, "token", {"seq": seq, "content": content, "ts": 1.0 + seq})


def done(event_id: str, seq: int) -> bytes:
    return frame(event_id, "done", {"seq": seq, "finish_reason": "stop", "usage": {}})


def chunked(*parts: bytes, complete: bool = True, hold: bool = False) -> Responder:
    """A chunked SSE response; ``complete=False`` hangs up mid-body (a dropped connection)."""

    def respond(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Type", "text/event-stream")
        handler.send_header("Transfer-Encoding", "chunked")
        handler.end_headers()
        for part in parts:
            handler.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
            handler.wfile.flush()
        if hold:
            # Keep the response open with keep-alives: the client must stop at the terminal event by itself.
            while not scripted_release(handler).wait(0.05):
                handler.wfile.write(b"e\r\n: keep-alive\n\n\r\n")
                handler.wfile.flush()
        if complete:
            handler.wfile.write(b"0\r\n\r\n")
        else:
            handler.close_connection = True

    return respond


def scripted_release(handler: BaseHTTPRequestHandler) -> threading.Event:
    released: threading.Event = handler.server.released  # type: ignore[attr-defined]
    return released


def until_close(body: bytes) -> Responder:
    """A response without length that ends when the server closes: a clean end, but maybe not the last event."""

    def respond(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Type", "text/event-stream")
        handler.send_header("Connection", "close")
        handler.end_headers()
        handler.wfile.write(body)
        handler.close_connection = True

    return respond


def hang_up(handler: BaseHTTPRequestHandler) -> None:
    """Closes the connection without an answer: what a client sees when a pooled connection was closed by the
    server just as it was reused, or a process died with the request."""
    handler.close_connection = True


def status(code: int, body: Any = None, **headers: str) -> Responder:
    def respond(handler: BaseHTTPRequestHandler) -> None:
        payload = orjson.dumps(body) if body is not None else b""
        handler.send_response(code)
        for name, value in headers.items():
            handler.send_header(name.replace("_", "-"), value)
        if code != 204:
            handler.send_header("Content-Type", "application/json")
            handler.send_header("Content-Length", str(len(payload)))
        handler.end_headers()
        handler.wfile.write(payload)

    return respond


def api_error(code: int, name: str, message: str, details: Any = None, **headers: str) -> Responder:
    return status(code, {"error": {"code": name, "message": message, "details": details}}, **headers)


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """``tokenbridge <argv>`` in this process: its exit code, stdout and stderr."""
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err

"""A scripted stand-in for a model API: a real local HTTP server that runs one script per request, so that a
provider's tests control the wire byte for byte (chunks, pauses, hang-ups, status codes).

Each request has a connection of its own unless the server keeps connections alive; over TLS it counts its
handshakes, for the tests of connection reuse."""

from __future__ import annotations

import contextlib
import itertools
import json
import select
import socket
import ssl
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from bridge.generation import GenerationRequest
from bridge.producer import Chunk, Finish


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]


class Exchange(BaseHTTPRequestHandler):
    """One request to the fake upstream; a script answers it with the helpers below."""

    protocol_version = "HTTP/1.1"
    server: ScriptedUpstream
    received: Received  # this exchange's request

    def setup(self) -> None:
        if isinstance(self.request, ssl.SSLSocket):
            # The handshake runs here, in the exchange's thread, so that a slow client does not hold up the others.
            self.request.settimeout(5)
            self.request.do_handshake()
            self.request.settimeout(None)
            self.server.protocols.append(self.request.selected_alpn_protocol())
        super().setup()

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        headers = {name.lower(): value for name, value in self.headers.items()}
        self.received = Received(self.path, headers, json.loads(body))
        self.server.requests.append(self.received)
        # Unless kept alive, one request per connection, so that every exchange ends with its script.
        self.close_connection = not self.server.keep_alive
        self.server.script(self)

    def _hang_up_header(self) -> None:
        if not self.server.keep_alive:
            self.send_header("Connection", "close")

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def start_stream(self, *, content_type: str = "text/event-stream") -> None:
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self._hang_up_header()
        self.end_headers()
        self.wfile.flush()

    def send(self, *pieces: str, pause_s: float = 0.01) -> None:
        """Each piece as its own HTTP chunk, flushed, then a pause: the client receives them apart."""
        for piece in pieces:
            data = piece.encode()
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            self.wfile.flush()
            time.sleep(pause_s)

    def end_stream(self) -> None:
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def reply(self, status: int, body: str, headers: dict[str, str] | None = None) -> None:
        data = body.encode()
        self.send_response(status)
        for name, value in {"Content-Type": "application/json", **(headers or {})}.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(data)))
        self._hang_up_header()
        self.end_headers()
        self.wfile.write(data)
        self.wfile.flush()

    def wait_for_disconnect(self, timeout_s: float = 5.0) -> bool:
        """Wait, sending nothing, until the client closes its end; notes it on the server."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and not self.server.closing.is_set():
            readable, _, _ = select.select([self.connection], [], [], 0.02)
            if readable and self._hung_up():
                self.server.disconnected_at = time.monotonic()
                self.server.disconnected.set()
                return True
        return False

    def _hung_up(self) -> bool:
        """Whether the readable connection has reached its end (a client sends nothing while it awaits an answer)."""
        try:
            if isinstance(self.connection, ssl.SSLSocket):
                return not self.connection.recv(1)
            return not self.connection.recv(1, socket.MSG_PEEK)
        except OSError:
            return True


Script = Callable[[Exchange], None]


def streaming(*frames: str) -> Script:
    """A script that answers with ``frames`` as one streamed response, at once."""

    def script(ex: Exchange) -> None:
        ex.start_stream()
        ex.send(*frames, pause_s=0)
        ex.end_stream()

    return script


class ScriptedUpstream(ThreadingHTTPServer):
    """``keep_alive``: connections serve request after request (the client decides when to close them).
    ``tls``: the server's TLS context; ``base_url`` is then ``https://127.0.0.1:<port>/v1``."""

    # Not daemon threads: server_close joins every exchange, so none outlives its test.
    daemon_threads = False

    def __init__(self, script: Script, *, keep_alive: bool = False, tls: ssl.SSLContext | None = None) -> None:
        super().__init__(("127.0.0.1", 0), Exchange)
        self.script = script
        self.keep_alive = keep_alive
        self.tls = tls
        self.requests: list[Received] = []
        self.connections = 0  # TCP connections accepted
        self.protocols: list[str | None] = []  # the ALPN protocol of each TLS handshake completed
        self._sockets: list[socket.socket] = []
        self.closing = threading.Event()
        self.disconnected = threading.Event()
        self.disconnected_at = 0.0
        self._thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
        self._thread.start()

    @property
    def base_url(self) -> str:
        scheme = "http" if self.tls is None else "https"
        return f"{scheme}://127.0.0.1:{self.server_address[1]}/v1"

    @property
    def handshakes(self) -> int:
        return len(self.protocols)

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, address = super().get_request()
        self.connections += 1
        if self.tls is not None:
            sock = self.tls.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        self._sockets.append(sock)
        return sock, address

    def stop(self) -> None:
        self.closing.set()
        self.shutdown()
        # An exchange waiting for the next request on a kept-alive connection ends once the connection is shut down.
        for sock in self._sockets:
            with contextlib.suppress(OSError):
                socket.socket.shutdown(sock, socket.SHUT_RDWR)
        self.server_close()
        self._thread.join()

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError):  # the client hanging up is part of the tests
            super().handle_error(request, client_address)


def refused_base_url() -> str:
    """A loopback URL with nothing listening."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


def cut(text: str, *positions: int) -> list[str]:
    """``text`` in pieces at ``positions``."""
    bounds = [0, *positions, len(text)]
    return [text[a:b] for a, b in itertools.pairwise(bounds)]


def run(provider: Any, request: GenerationRequest, stop: threading.Event | None = None) -> list[Chunk]:
    return list(provider.stream(request, stop or threading.Event()))


def split_finish(chunks: list[Chunk]) -> tuple[list[str], Finish]:
    *tokens, finish = chunks
    assert isinstance(finish, Finish)
    assert all(isinstance(token, str) for token in tokens)
    return [str(token) for token in tokens], finish


def stop_later(stop: threading.Event, delay_s: float) -> threading.Timer:
    timer = threading.Timer(delay_s, stop.set)
    timer.start()
    return timer


def no_watcher_left() -> bool:
    deadline = time.monotonic() + 1.0
    while any(t.name == "upstream-cancel" for t in threading.enumerate()):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True

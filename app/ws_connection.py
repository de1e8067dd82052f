"""A WebSocket connection: simple-websocket's server, with whole writes and a closing handshake the client can read.

flask-sock serves the route and builds the connection; ``WebSocket.adopt`` takes it over as the route starts.

simple-websocket (on wsproto) reads the client's frames in a thread of its own and answers pings and closes there. Two
things are changed here:

- Every write to the socket takes one lock and is a whole ``sendall``: the events' writer, the reader thread's pongs
  and close frames, and the pings all share the socket, and a frame must never land in the middle of another.
- A message over ``max_message_size`` (flask-sock's ``SOCK_SERVER_OPTIONS``) is answered with close code 1009,
  and then the rest of the client's message is read until its own close frame comes, before the socket is closed.
  simple-websocket closed the socket at once, with the rest of the message unread, and the kernel answers a close
  with unread data with a TCP reset, which destroys the close frame on its way: the client saw a reset (a browser,
  code 1006), never 1009.
"""

from __future__ import annotations

import contextlib
import selectors
import threading
import time
from typing import Any

from simple_websocket import ConnectionClosed, Server
from wsproto.connection import ConnectionState
from wsproto.frame_protocol import CloseReason
from wsproto.utilities import LocalProtocolError, RemoteProtocolError

# How long a closing connection waits for the client's close frame (or, after a 1009, reads the rest of the
# message), and how much of it it reads at most, before the socket is closed anyway.
CLOSE_WAIT_S = 2.0
CLOSE_READ_BYTES = 1 << 20


class _SerialSocket:
    """The connection's socket: each write whole (``sendall``) and one at a time; anything else as the socket does."""

    def __init__(self, sock: Any) -> None:
        self._sock = sock
        self.lock = threading.RLock()

    def send(self, data: bytes) -> int:
        with self.lock:
            self._sock.sendall(data)
        return len(data)

    def sendall(self, data: bytes) -> None:
        with self.lock:
            self._sock.sendall(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


class WebSocket(Server):  # type: ignore[misc]
    """One client's WebSocket (see the module's docstring for what differs from simple-websocket's ``Server``)."""

    sock: Any

    @classmethod
    def adopt(cls, ws: Server) -> WebSocket:
        """The connection flask-sock made (a simple-websocket ``Server``), as this class: flask-sock builds a plain
        ``Server`` and offers no way to name another, so the route takes it over first thing. Its reader thread only
        looks its methods and socket up when it next uses them."""
        ws.__class__ = cls
        ws.sock = _SerialSocket(ws.sock)
        return ws  # type: ignore[no-any-return]

    def send_frames(self, data: bytes) -> None:
        """Frames the caller built, in one write; ConnectionClosed once the connection is closing."""
        with self.sock.lock:
            if not self.connected or self.ws.state is not ConnectionState.OPEN:
                raise ConnectionClosed(self.close_reason, self.close_message)
            self.sock.sendall(data)

    def close(self, reason: int | None = None, message: str | None = None) -> None:
        """Send a close frame, then give the client CLOSE_WAIT_S to answer it before the socket may be closed."""
        try:
            with self.sock.lock:
                super().close(reason, message)
        finally:
            if self.thread.ident != threading.get_ident():  # simple-websocket's reader closes at a ping timeout
                self.thread.join(CLOSE_WAIT_S)

    def _handle_events(self) -> bool:
        keep_going: bool = super()._handle_events()
        if not keep_going and self.ws.state is ConnectionState.LOCAL_CLOSING:
            # simple-websocket has just sent 1009 for a message over max_message_size, and would close the socket now.
            self.close_reason, self.close_message = CloseReason.MESSAGE_TOO_BIG, "Message is too big"
            self.connected = False
            self.event.set()
            self._read_until_closed()
        return keep_going

    def _read_until_closed(self) -> None:
        """Read (and drop) what the client still sends, until its close frame, EOF, CLOSE_WAIT_S or CLOSE_READ_BYTES."""
        deadline = time.monotonic() + CLOSE_WAIT_S
        read = 0
        with self.selector_class() as selector, contextlib.suppress(OSError, LocalProtocolError, RemoteProtocolError):
            selector.register(self.sock, selectors.EVENT_READ)
            while self.ws.state is not ConnectionState.CLOSED and read < CLOSE_READ_BYTES:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not selector.select(remaining):
                    return
                data = self.sock.recv(65536)
                if not data:
                    return
                read += len(data)
                self.ws.receive_data(data)
                for _ in self.ws.events():
                    pass  # the rest of the message, then the client's close (wsproto is then CLOSED)

"""A small synchronous WebSocket client for the tests, on wsproto.

simple-websocket's client loses what the server sends in the same TCP segment as its 101 response (it takes
the first event of the handshake's read and never looks at the rest): a generation that has already finished
is sent at once, so a resume would now and then see neither its frames nor the close code.
"""

from __future__ import annotations

import socket
import time
from collections import deque
from urllib.parse import urlsplit

from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, CloseConnection, Ping, RejectConnection, Request, TextMessage


class ConnectionClosed(Exception):
    def __init__(self, reason: int) -> None:
        super().__init__(f"closed with {reason}")
        self.reason = reason


class Client:
    def __init__(self, sock: socket.socket, ws: WSConnection) -> None:
        self.sock = sock
        self.ws = ws
        self.messages: deque[str] = deque()
        self.text = ""
        self.close_reason: int | None = None
        self.close_message: str | None = None

    @classmethod
    def connect(cls, url: str, headers: dict[str, str] | None = None, timeout_s: float = 10) -> Client:
        parts = urlsplit(url)
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        sock = socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 80), timeout=timeout_s)
        client = cls(sock, WSConnection(ConnectionType.CLIENT))
        extra = [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
        sock.sendall(client.ws.send(Request(host=parts.netloc, target=target, extra_headers=extra)))
        accepted = False
        while not accepted:
            for event in client._read(timeout_s):
                if isinstance(event, RejectConnection):
                    raise ConnectionError(f"rejected with {event.status_code}")
                accepted = accepted or isinstance(event, AcceptConnection)
        return client

    def send(self, text: str, *, finished: bool = True) -> None:
        """A text message, or with ``finished=False`` a fragment of one (the next ``send`` continues it)."""
        self.sock.sendall(self.ws.send(TextMessage(data=text, message_finished=finished)))

    def receive(self, timeout: float) -> str | None:
        """The next text message; None after ``timeout``; ConnectionClosed once every message was taken."""
        deadline = time.monotonic() + timeout
        while not self.messages and self.close_reason is None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            try:
                self._read(remaining)
            except TimeoutError:
                return None
        if self.messages:
            return self.messages.popleft()
        assert self.close_reason is not None
        raise ConnectionClosed(self.close_reason)

    def _read(self, timeout_s: float) -> list[object]:
        """Read once, handle every event it completes (all of them, not only the first) and return them."""
        self.sock.settimeout(timeout_s)
        data = self.sock.recv(65536)
        if not data:
            self.close_reason = self.close_reason or 1006  # closed without a close frame
            self.ws.receive_data(None)
        else:
            self.ws.receive_data(data)
        events = list(self.ws.events())
        for event in events:
            if isinstance(event, TextMessage):
                self.text += event.data
                if event.message_finished:
                    self.messages.append(self.text)
                    self.text = ""
            elif isinstance(event, Ping):
                self.sock.sendall(self.ws.send(event.response()))
            elif isinstance(event, CloseConnection):
                self.close_reason, self.close_message = event.code, event.reason
                self.sock.sendall(self.ws.send(event.response()))
                self.sock.close()
        return events

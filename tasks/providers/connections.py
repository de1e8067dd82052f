"""The HTTP clients of the upstreams, and the guard that shuts down a stopped generation's connection.

Each upstream (scheme, host and port) has one ``httpx.Client`` per process, shared by every model and generation
there, whose pool keeps connections alive: a generation after another one starts on a warm connection instead of
paying a TCP and a TLS handshake before its first token.

A cancel must still reach the connection of its own request, even while that request waits for its response
headers on a reused connection. httpcore's ``trace`` events name a connection only when it is opened, so the pools
open their connections through ``_GuardedBackend`` instead: a connection's network stream names itself to the
guard of the request that opens it or writes a request on it (a context variable says which request that is).
An HTTP/1.1 connection carries one request at a time, so that is the connection of this request alone.
"""

from __future__ import annotations

import contextlib
import http.cookiejar
import socket
import ssl
import threading
import time
from collections.abc import Iterable, Iterator
from contextvars import ContextVar
from typing import Any

import httpcore
import httpx

# How often a guard looks at ``stop``: the longest a cancelled upstream request stays open.
CANCEL_POLL_S = 0.05
# Idle connections kept per upstream, and how long each stays open unused: under the idle timeouts of load
# balancers that drop connections silently (minutes); an upstream that closes sooner is seen to have closed
# before its connection is reused. Connections in use are not capped: a streaming answer holds its HTTP/1.1
# connection to the end, so a cap would queue generations behind each other. The worker's concurrency and a
# model's ``concurrency`` bound them.
MAX_IDLE_CONNECTIONS = 100
IDLE_EXPIRY_S = 30.0

_claimant: ContextVar[ConnectionGuard | None] = ContextVar("upstream_connection_guard", default=None)
_read_deadline: ContextVar[float | None] = ContextVar("upstream_read_deadline", default=None)

_clients: dict[tuple[str, str, int | None], httpx.Client] = {}
_clients_lock = threading.Lock()


class ConnectionGuard:
    """Shuts the connection of one upstream request down from a watcher thread as soon as ``stop`` is set.

    Closing a socket does not wake a thread blocked reading it, but shutting it down does. The connection is the
    one that the request opens or writes on inside ``claiming()``; it is then only ever shut down, never closed,
    so that the socket stays valid for the reading thread until httpcore closes it. The guard ends at the latest
    when the response is closed (``watch``), before its connection can go back to the pool.
    """

    def __init__(self, stop: threading.Event) -> None:
        self._stop = stop
        self._done = threading.Event()
        self._lock = threading.Lock()
        self._stream: _GuardedStream | None = None
        self._cancelled = False
        self._thread = threading.Thread(target=self._watch, name="upstream-cancel", daemon=True)

    def __enter__(self) -> ConnectionGuard:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @contextlib.contextmanager
    def claiming(self) -> Iterator[None]:
        """Within this block, the connection that the current thread's request uses is this guard's."""
        token = _claimant.set(self)
        try:
            yield
        finally:
            _claimant.reset(token)

    def watch(self, response: httpx.Response) -> None:
        """End the guard when ``response`` is closed (also by reading it to its end), before its connection is
        released: a guard never shuts down a connection that another request may hold."""
        assert isinstance(response.stream, httpx.SyncByteStream)
        response.stream = _GuardedBody(response.stream, self)

    def attach(self, stream: _GuardedStream) -> None:
        with self._lock:
            if self._done.is_set():
                return
            self._stream = stream
            if self._cancelled:
                stream.shut_down()

    def close(self) -> None:
        """End the watcher; call before the response is closed, so that it never touches a connection back in the
        pool."""
        self._done.set()
        if self._thread.is_alive():
            self._thread.join()

    def _watch(self) -> None:
        while not self._done.wait(CANCEL_POLL_S):
            if self._stop.is_set():
                with self._lock:
                    if self._done.is_set():
                        return
                    self._cancelled = True
                    if self._stream is not None:
                        self._stream.shut_down()
                return


class _GuardedBody(httpx.SyncByteStream):
    def __init__(self, stream: httpx.SyncByteStream, guard: ConnectionGuard) -> None:
        self._stream = stream
        self._guard = guard

    def __iter__(self) -> Iterator[bytes]:
        yield from self._stream

    def close(self) -> None:
        self._guard.close()
        self._stream.close()


@contextlib.contextmanager
def reads_within(seconds: float) -> Iterator[None]:
    """Within this block, the current thread's reads from upstreams fail once ``seconds`` have passed (and its
    request's connection is closed, not pooled)."""
    token = _read_deadline.set(time.monotonic() + seconds)
    try:
        yield
    finally:
        _read_deadline.reset(token)


def _claim(stream: _GuardedStream) -> None:
    guard = _claimant.get()
    if guard is not None:
        guard.attach(stream)


class _GuardedStream(httpcore.NetworkStream):
    """A connection's network stream that names itself to the guard of the request using it.

    Once shut down it reports itself readable, which is how httpcore tells a connection that the server closed:
    the pool closes it rather than lend it to another request, even if its response had ended just before.
    """

    def __init__(self, stream: httpcore.NetworkStream) -> None:
        self._stream = stream
        self._shut_down = False
        _claim(self)

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        deadline = _read_deadline.get()
        if deadline is not None:
            remaining = max(deadline - time.monotonic(), 0.001)
            timeout = remaining if timeout is None else min(timeout, remaining)
        return self._stream.read(max_bytes, timeout)

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        # A request's first write (its headers) comes from the thread that sends it, also on a reused connection.
        _claim(self)
        self._stream.write(buffer, timeout)

    def close(self) -> None:
        self._stream.close()

    def start_tls(
        self, ssl_context: ssl.SSLContext, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore.NetworkStream:
        return _GuardedStream(self._stream.start_tls(ssl_context, server_hostname, timeout))

    def get_extra_info(self, info: str) -> Any:
        if info == "is_readable" and self._shut_down:
            return True
        return self._stream.get_extra_info(info)

    def shut_down(self) -> None:
        """Wake the thread blocked on this connection: its read fails, and httpcore closes the connection."""
        self._shut_down = True
        sock = self._stream.get_extra_info("socket")
        if isinstance(sock, socket.socket):
            with contextlib.suppress(OSError):
                # The plain call: ``SSLSocket.shutdown`` would also drop its TLS state under the reading thread.
                socket.socket.shutdown(sock, socket.SHUT_RDWR)


class _GuardedBackend(httpcore.NetworkBackend):
    """httpcore's network backend, with every stream it opens guarded."""

    def __init__(self, backend: httpcore.NetworkBackend) -> None:
        self._backend = backend

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        return _GuardedStream(self._backend.connect_tcp(host, port, timeout, local_address, socket_options))

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.NetworkStream:
        return _GuardedStream(self._backend.connect_unix_socket(path, timeout, socket_options))

    def sleep(self, seconds: float) -> None:
        self._backend.sleep(seconds)


def new_client() -> httpx.Client:
    """A client for upstreams: keep-alive HTTP/1.1 connections whose requests a ``ConnectionGuard`` can cancel.

    HTTP/1.1 only, even where the upstream offers HTTP/2: httpcore does not reset an HTTP/2 stream whose response is
    closed early (encode/httpcore#943), so a cancelled generation would go on being generated, and billed, to its
    end; and one stream's read error or timeout fails every stream of its connection. Each request carries its
    model's timeout. No cookies are kept: models of different accounts share the client.
    """
    client = httpx.Client(
        http2=False,
        limits=httpx.Limits(
            max_connections=None, max_keepalive_connections=MAX_IDLE_CONNECTIONS, keepalive_expiry=IDLE_EXPIRY_S
        ),
        cookies=http.cookiejar.CookieJar(policy=http.cookiejar.DefaultCookiePolicy(allowed_domains=[])),
    )
    _guard_pools(client)
    return client


def _guard_pools(client: httpx.Client) -> None:
    """Make each pool of ``client`` (direct, and through the proxies of the environment) open guarded streams.

    httpcore's pools take a ``network_backend``, but httpx does not pass one through, so this sets it on the pools
    httpx built: ``HTTPTransport._pool`` and ``ConnectionPool._network_backend`` of the versions pinned in
    requirements.txt. When either is missing it fails here, rather than leave cancels waiting on reused connections.
    """
    for transport in (client._transport, *client._mounts.values()):
        if transport is None:
            continue
        pool = getattr(transport, "_pool", None)
        backend = getattr(pool, "_network_backend", None)
        if not isinstance(pool, httpcore.ConnectionPool) or not isinstance(backend, httpcore.NetworkBackend):
            raise RuntimeError(f"cannot guard the connections of {type(transport).__name__}: httpx or httpcore changed")
        pool._network_backend = _GuardedBackend(backend)


def client_for(base_url: str) -> httpx.Client:
    """The process's client for the upstream of ``base_url``: one per scheme, host and port, shared by every model
    and generation there (httpx clients are safe for concurrent requests, from threads or greenlets)."""
    url = httpx.URL(base_url)
    key = (url.scheme, url.host, url.port)
    with _clients_lock:
        client = _clients.get(key)
        if client is None:
            client = _clients[key] = new_client()
        return client


def close_clients() -> None:
    """Close every shared client; the next ``client_for`` makes a new one."""
    with _clients_lock:
        clients = list(_clients.values())
        _clients.clear()
    for client in clients:
        client.close()

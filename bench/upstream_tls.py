"""Connections to a model API: does a generation open a new TLS connection, or reuse one kept alive?

A local OpenAI-compatible upstream (``tests.support.fake_upstream``, which keeps connections alive) served over TLS with
a self-signed certificate made at run time, counting the TCP connections it accepts and the TLS handshakes
that complete. The registry names it as the model ``tls-fake`` (``MODELS_FILE``); the worker trusts the
certificate through ``SSL_CERT_FILE``, which httpx reads (the model registry has no CA setting).
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from bench.client import StreamResult, read_sse, submit
from tests.support.fake_upstream import FakeUpstream
from tests.support.stack import Stack

MODEL = "tls-fake"
PROMPT = "one two three four five six seven eight"


def make_certificate(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and localhost, with its key (PEM files), made by ``openssl``."""
    certificate, key = directory / "upstream-cert.pem", directory / "upstream-key.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"),
            *("-keyout", str(key), "-out", str(certificate), "-days", "2", "-subj", "/CN=127.0.0.1"),
            *("-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"),
        ],
        check=True,
        capture_output=True,
    )
    return certificate, key


class TlsUpstream(FakeUpstream):
    """The fake upstream over TLS; counts accepted connections, completed and failed handshakes."""

    def __init__(self, certificate: Path, key: Path) -> None:
        super().__init__(delay_s=0.002)
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(certificate, key)
        self.connections = self.handshakes = self.failed_handshakes = 0
        self._lock = threading.Lock()

    @property
    def base_url(self) -> str:
        return f"https://127.0.0.1:{self.server_address[1]}/v1"

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, address = super().get_request()
        with self._lock:
            self.connections += 1
        return self.context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False), address

    def finish_request(self, request: Any, client_address: Any) -> None:
        try:
            request.settimeout(10)
            request.do_handshake()
            request.settimeout(None)
        except (ssl.SSLError, OSError):
            with self._lock:
                self.failed_handshakes += 1
            return
        with self._lock:
            self.handshakes += 1
        super().finish_request(request, client_address)

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client going away is part of the game

    def counts(self) -> dict[str, int]:
        with self._lock:
            return {
                "connections": self.connections,
                "handshakes": self.handshakes,
                "failed_handshakes": self.failed_handshakes,
                "requests": len(self.requests),
            }


@contextmanager
def tls_upstream(directory: Path) -> Iterator[tuple[TlsUpstream, dict[str, str], dict[str, str]]]:
    """The TLS upstream, running; with the environment of every process (``MODELS_FILE``) and the worker's
    (``SSL_CERT_FILE``)."""
    directory.mkdir(parents=True, exist_ok=True)
    certificate, key = make_certificate(directory)
    server = TlsUpstream(certificate, key)
    with server:
        models = directory / "models.toml"
        models.write_text(
            f'[models.{MODEL}]\nprovider = "openai"\nbase_url = "{server.base_url}"\nmodel = "fake"\ntimeout_s = 10\n'
        )
        yield server, {"MODELS_FILE": str(models)}, {"SSL_CERT_FILE": str(certificate)}


async def _generate(stack: Stack, count: int, concurrency: int) -> list[StreamResult]:
    body = {"model": MODEL, "prompt": PROMPT, "max_tokens": len(PROMPT.split())}
    results = [StreamResult() for _ in range(count)]
    semaphore = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(base_url=stack.base_url, headers=stack.headers, timeout=60) as client:

        async def one(result: StreamResult) -> None:
            async with semaphore:
                created = await submit(client, body, result)
                if created is not None:
                    await read_sse("127.0.0.1", stack.web_ports[0], created["events_url"], stack.headers, result)

        await asyncio.gather(*(one(result) for result in results))
    return results


def keepalive(stack: Stack, server: TlsUpstream, count: int, *, concurrency: int = 2) -> dict[str, Any]:
    """``count`` generations of the TLS model, ``concurrency`` at a time, each read to its end: the connections
    and TLS handshakes the upstream saw, per generation."""
    before = server.counts()
    results = asyncio.run(_generate(stack, count, concurrency))
    after = server.counts()
    seen = {name: after[name] - before[name] for name in after}
    return {
        "generations": count,
        "concurrency": concurrency,
        **seen,
        "handshakes_per_generation": round(seen["handshakes"] / count, 3),
        "done": sum(1 for r in results if r.terminal == "done"),
        "tokens": sum(r.tokens for r in results),
        "expected_tokens": count * len(PROMPT.split()),
        "errors": [r.error for r in results if r.error][:5],
        "terminals": sorted({r.terminal or "none" for r in results}),
    }

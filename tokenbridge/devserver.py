"""``tokenbridge dev``: embedded Redis (when none is configured) plus every Procfile process, until Ctrl-C."""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

# The launcher's one import of the server's package: `dev` runs the server, with Redis embedded when none is set.
from bridge.embedded import EmbeddedRedis

STATE_DIR = Path(".tokenbridge")
# Flower runs on the web's port + 300 (the dashboard's default link, app/pages.py).
FLOWER_PORT_OFFSET = 300
DEFAULT_HOST = "127.0.0.1"


def port_taken(host: str, port: int) -> bool:
    """True when something already listens on ``host:port`` (or the address cannot be bound)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def _taken_ports(host: str, port: int) -> list[str]:
    wanted = {port: "web", port + FLOWER_PORT_OFFSET: "Flower"}
    return [f"{p} ({what})" for p, what in wanted.items() if port_taken(host, p)]


def _procfile_on(procfile: str, host: str, state_dir: Path) -> str:
    """The Procfile with its 0.0.0.0 binds moved to ``host`` (the Procfile itself stays as deploys need it)."""
    text = Path(procfile).read_text()
    if host == "0.0.0.0":
        return procfile
    path = state_dir / "Procfile.dev"
    state_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(text.replace("0.0.0.0", host))
    return str(path)


def _dev_secrets(state_dir: Path) -> dict[str, str]:
    """A dev API key, secret key and Flower password, kept across runs so a browser's saved key still works."""
    path = state_dir / "dev.json"
    if path.exists():
        stored: dict[str, str] = json.loads(path.read_text())
        return stored
    values = {
        "api_key": f"dev-{secrets.token_urlsafe(18)}",
        "secret_key": secrets.token_urlsafe(32),
        "flower_password": secrets.token_urlsafe(12),
    }
    state_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(values, indent=2))
    path.chmod(0o600)
    return values


def _wait_ready(url: str, process: subprocess.Popen[bytes], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if httpx.get(f"{url}/healthz", timeout=1.0).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    return False


# Long: start, print what a newcomer needs, wait, stop: one story, told in order.
def run_dev(*, port: int = 8000, procfile: str = "Procfile", host: str = DEFAULT_HOST) -> int:
    """Run the stack on ``host`` until Ctrl-C; 1 at once, before starting anything, when a port is taken."""
    taken = _taken_ports(host, port)
    if taken:
        sys.stderr.write(
            f"tokenbridge dev: {' and '.join(taken)} already in use on {host}: another server is there. "
            f"Stop it, or pick other ports: make dev PORT={port + 1} (tokenbridge dev --port {port + 1}).\n"
        )
        return 1
    env = dict(os.environ)
    state_dir = STATE_DIR
    procfile = _procfile_on(procfile, host, state_dir)
    values = _dev_secrets(state_dir)
    redis_server: EmbeddedRedis | None = None
    if not env.get("REDIS_URL") and not env.get("REDIS_HOST"):
        redis_server = EmbeddedRedis(state_dir / "redis").start()
        env["REDIS_URL"] = redis_server.url
        print(f"Started embedded Redis {redis_server.version()} at {redis_server.url} (data in {state_dir}/redis).")
    env.setdefault("API_KEYS", values["api_key"])
    env.setdefault("SECRET_KEY", values["secret_key"])
    env.setdefault("FLOWER_BASIC_AUTH", f"admin:{values['flower_password']}")
    env.setdefault("LOG_FORMAT", "text")
    env.setdefault("WEB_CONCURRENCY", "1")
    env.setdefault("CELERY_CONCURRENCY", "50")
    # The Procfile's commands (gunicorn, celery, python) come from this virtualenv.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.pop("PORT", None)

    shown_host = "127.0.0.1" if host in ("0.0.0.0", "::") else (f"[{host}]" if ":" in host else host)
    web_url = f"http://{shown_host}:{port}"
    flower_url = f"http://{shown_host}:{port + FLOWER_PORT_OFFSET}"
    print(f"Starting web, worker, consumer and Flower on {host} (Procfile: {procfile}) ...", flush=True)
    command = [sys.executable, "-m", "honcho", "start", "-f", procfile, "-p", str(port)]
    honcho = subprocess.Popen(command, env=env)

    def announce() -> None:
        if _wait_ready(web_url, honcho, 60):
            api_key = env["API_KEYS"].split(",")[0].partition(":")[2] or env["API_KEYS"].split(",")[0]
            print(
                "\n"
                f"  tokenbridge is running:  {web_url}/#key={api_key}\n"
                f"  API key:                 {api_key}\n"
                f"  Flower:                  {flower_url}  ({env['FLOWER_BASIC_AUTH']})\n"
                "  Ctrl-C stops everything.\n",
                flush=True,
            )

    threading.Thread(target=announce, daemon=True).start()
    try:
        return honcho.wait()
    except KeyboardInterrupt:
        honcho.send_signal(signal.SIGINT)
        try:
            honcho.wait(30)
            return 0
        except subprocess.TimeoutExpired:
            honcho.kill()
            return 1
    finally:
        if redis_server is not None:
            redis_server.stop()

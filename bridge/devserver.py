"""``tokenbridge dev``: embedded Redis (when none is configured) plus every Procfile process, until Ctrl-C."""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

from bridge.embedded import EmbeddedRedis

STATE_DIR = Path(".tokenbridge")


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


def run_dev(*, port: int = 8000, procfile: str = "Procfile") -> int:
    env = dict(os.environ)
    state_dir = STATE_DIR
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

    command = [sys.executable, "-m", "honcho", "start", "-f", procfile, "-p", str(port)]
    honcho = subprocess.Popen(command, env=env)
    web_url = f"http://127.0.0.1:{port}"

    def announce() -> None:
        if _wait_ready(web_url, honcho, 60):
            api_key = env["API_KEYS"].split(",")[0].partition(":")[2] or env["API_KEYS"].split(",")[0]
            print(
                "\n"
                f"  tokenbridge is running:  {web_url}/#key={api_key}\n"
                f"  API key:                 {api_key}\n"
                f"  Flower:                  http://127.0.0.1:{port + 300}  ({env['FLOWER_BASIC_AUTH']})\n"
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

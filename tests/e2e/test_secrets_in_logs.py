"""No secret reaches a log: not the keys (of API_KEYS, of the keys file, or a wrong one), SECRET_KEY, a provider's
key, the Redis password, Flower's password or a stream token, whatever the processes are given or refuse."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from bridge.embedded import free_port
from tests.support import wait_for
from tests.support.fake_upstream import FakeUpstream
from tests.support.procfile import ROOT
from tests.support.stack import Stack, build_stack

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

REDIS_PASSWORD = "pw-redis-3f9a0c1e"
SECRET_KEY = "sk-secret-key-77d1c0ffee"
ENV_KEY = "sk-env-key-5b2e0123456789"
FILE_KEY = "sk-file-key-9a8b0123456789"
PROVIDER_KEY = "sk-provider-key-c4d50123456789"
FLOWER_PASSWORD = "pw-flower-e6f70123"
WRONG_KEY = "sk-wrong-key-0123456789abcdef"
# Key-like values in invalid entries of the keys file: each would be in the log of a pydantic error.
INVALID_ENTRY_VALUES = (
    "hk_short",
    "sk-neighbour-0123456789abc",
    "sk-misspelt-0123456789abc",
    "sk-not-a-hash-0123456789",
)
BROKEN_KEYS_FILE = """
keys = [
  {name = "short", key = "hk_short"},
  {name = "typo", key = "sk-neighbour-0123456789abc", scpoe = "admin"},
  {name = "misspelt", kye = "sk-misspelt-0123456789abc"},
  {name = "hashed", key_sha256 = "sk-not-a-hash-0123456789"},
]
"""


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, FakeUpstream]]:
    """web, worker, consumer and flower on a Redis with a password, with a secret of each kind in their settings."""
    directory = tmp_path_factory.mktemp("secrets")
    models = directory / "models.toml"
    keys_file = directory / "secret-keys.toml"
    keys_file.write_text(f'[[keys]]\nname = "app-file"\nkey = "{FILE_KEY}"\n')
    with FakeUpstream() as upstream:
        models.write_text(
            f'[models.fake-gpt]\nprovider = "openai"\nbase_url = "{upstream.base_url}"\n'
            'api_key_env = "FAKE_OPENAI_KEY"\n'
        )
        stack = build_stack(directory / "redis", ROOT / "test-artifacts" / "secrets-logs")
        server = stack.redis
        server.stop()
        server.extra_args = ["--requirepass", REDIS_PASSWORD]
        url = f"redis://:{REDIS_PASSWORD}@127.0.0.1:{server.port}/0"
        server.start(probe_url=url)
        stack.env.update(
            REDIS_URL=url,
            SECRET_KEY=SECRET_KEY,
            API_KEYS=f"app:{ENV_KEY}",
            API_KEYS_FILE=str(keys_file),
            MODELS_FILE=str(models),
            FAKE_OPENAI_KEY=PROVIDER_KEY,
            FLOWER_BASIC_AUTH=f"ops:{FLOWER_PASSWORD}",
        )
        try:
            for name in ("web", "worker", "consumer"):
                stack.start(name)
            stack.start("flower", PORT=str(free_port()))
            stack.wait_ready()
            yield stack, upstream
        finally:
            stack.stop_all()
            server.stop()


def test_no_log_line_of_any_process_holds_a_secret(guarded: tuple[Stack, FakeUpstream]) -> None:
    stack, upstream = guarded
    key = {"Authorization": f"Bearer {ENV_KEY}"}
    # Given generations streamed with a provider's key and read with a stream token
    for model in ("echo", "fake-gpt"):
        gen = httpx.post(stack.url("/v1/generations"), json={"model": model, "prompt": "a b c"}, headers=key).json()
        read = httpx.get(stack.url(gen["events_url"]), params={"token": gen["stream_token"]}, timeout=30)
        assert read.status_code == 200 and "event: done" in read.text, read.text
    assert upstream.requests[-1]["headers"]["Authorization"] == f"Bearer {PROVIDER_KEY}"
    token = gen["stream_token"]
    # And a wrong key, and the key of the keys file
    assert httpx.get(stack.url("/v1/stats"), headers={"Authorization": f"Bearer {WRONG_KEY}"}).status_code == 401
    assert httpx.get(stack.url("/v1/stats"), headers={"Authorization": f"Bearer {FILE_KEY}"}).status_code == 200
    # When the keys file gets entries that do not validate, with key-like values in them
    keys_file = Path(stack.env["API_KEYS_FILE"])
    keys_file.write_text(BROKEN_KEYS_FILE)
    time.sleep(1.2)  # a fixed wait: web looks at the keys file again once KEYS_FILE_CHECK_S (1 s) has passed
    for _ in range(4):  # each web process reads it again
        httpx.get(stack.url("/v1/stats"), headers=key)
    wait_for(
        lambda: "keys entry 2 (name 'typo'): scpoe" in (stack.logs / "web.log").read_text(),
        message="the broken keys file was not reported",
    )
    # And processes are started with settings they refuse: a web with that keys file, a consumer with a bad value
    stack.start("web-refused", "web", PORT=str(free_port()))
    stack.start("consumer-refused", "consumer", REDIS_PORT=REDIS_PASSWORD)  # a password in the wrong variable
    stack.start("consumer-misordered", "consumer", CONSUMER_HEARTBEAT_MS="5000")
    refused = ("web-refused", "consumer-refused", "consumer-misordered")
    for name in refused:
        assert stack.processes[name].wait(60) != 0
    # Then no log of any process holds any of the secrets
    secrets = (REDIS_PASSWORD, SECRET_KEY, ENV_KEY, FILE_KEY, PROVIDER_KEY, FLOWER_PASSWORD, WRONG_KEY, token)
    logs = {path.stem: path.read_text(errors="replace") for path in stack.logs.glob("*.log")}
    assert set(logs) == {"web", "worker", "consumer", "flower", *refused}
    found = {name: [s for s in (*secrets, *INVALID_ENTRY_VALUES) if s in text] for name, text in logs.items()}
    assert found == {name: [] for name in logs}
    # And the refusals said what was wrong, by name and field
    assert "keys entry 1 (name 'short'): key" in logs["web-refused"]
    assert "redis_port" in logs["consumer-refused"]
    assert "CONSUMER_CLAIM_IDLE_MS must be at least" in logs["consumer-misordered"]

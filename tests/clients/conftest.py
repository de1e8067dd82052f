"""The clients people install and the recipes in examples/, against one stack of their own.

The stack is configured as a deployment behind an app would be: the app's origin (``APP_ORIGIN``, where the
example backends listen) is in CORS_ORIGINS, so that its page can read streams from tokenbridge.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

import httpx
import pytest
from itsdangerous import TimestampSigner, URLSafeTimedSerializer

from app.auth import _SALT
from bridge.embedded import free_port
from tests.browser.support import CHROMIUM, LAUNCH_ARGS, missing
from tests.procfile import ROOT
from tests.stack import Stack, running_stack

if TYPE_CHECKING:
    from playwright.sync_api import Browser

CLIENT_SOURCE = ROOT / "clients" / "python" / "src"
APP_PORT = free_port()
APP_ORIGIN = f"http://127.0.0.1:{APP_PORT}"

# The examples import tokenbridge_client, as they would once it is installed (pip install ./clients/python).
if str(CLIENT_SOURCE) not in sys.path:
    sys.path.insert(0, str(CLIENT_SOURCE))
if str(ROOT / "examples") not in sys.path:
    sys.path.insert(0, str(ROOT / "examples"))


@pytest.fixture(scope="package")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running_stack(
        tmp_path_factory.mktemp("clients-redis"),
        ROOT / "test-artifacts" / "clients-logs",
        CORS_ORIGINS=APP_ORIGIN,
    ) as stack:
        yield stack


@pytest.fixture(scope="package")
def browser() -> Iterator[Browser]:
    reason = missing()
    if reason:
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=LAUNCH_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


class _TwoHoursAgo(TimestampSigner):
    def get_timestamp(self) -> int:
        return int(time.time()) - 7200


def expired_token(stack: Stack, generation_id: str) -> str:
    """A stream token for the generation, signed two hours ago (its time to live is one hour)."""
    serializer = URLSafeTimedSerializer(stack.env["SECRET_KEY"], salt=_SALT, signer=_TwoHoursAgo)
    token = str(serializer.dumps({"g": generation_id}))
    refused = httpx.get(stack.url(f"/v1/generations/{generation_id}"), params={"token": token})
    assert refused.json()["error"]["code"] == "token_expired"
    return token

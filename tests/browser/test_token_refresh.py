"""The browser client refreshes an expired stream token through its callback and reads the answer whole."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from itsdangerous import TimestampSigner, URLSafeTimedSerializer

from app.auth import _SALT
from tests.browser.support import missing
from tests.stack import API_KEY, Stack

if TYPE_CHECKING:
    from playwright.sync_api import Page

reason = missing()
if reason:
    pytest.skip(reason, allow_module_level=True)

pytestmark = [pytest.mark.browser, pytest.mark.e2e]


class _TwoHoursAgo(TimestampSigner):
    def get_timestamp(self) -> int:
        return int(time.time()) - 7200


def _expired_token(stack: Stack, generation_id: str) -> str:
    """A stream token for the generation, signed two hours ago (its time to live is one hour)."""
    serializer = URLSafeTimedSerializer(stack.env["SECRET_KEY"], salt=_SALT, signer=_TwoHoursAgo)
    token = str(serializer.dumps({"g": generation_id}))
    refused = httpx.get(stack.url(f"/v1/generations/{generation_id}"), params={"token": token})
    assert refused.json()["error"]["code"] == "token_expired"
    return token


READ = """([transport, created, expired, key]) => new Promise((resolve) => {
  let refreshed = 0;
  const opts = {
    eventsUrl: created.events_url, wsUrl: created.ws_url, token: expired,
    // What an app's backend does with its API key; here the page asks directly.
    refreshToken: () => { refreshed += 1; return fetch(`/v1/generations/${created.id}/token`,
      {method: "POST", headers: {Authorization: `Bearer ${key}`}}).then((r) => r.json()); },
    onDone: (event, handle) => resolve({text: handle.text, refreshed}),
    onError: (error) => resolve({error: error.code, refreshed}),
  };
  transport === "sse" ? Tokenbridge.stream(opts) : Tokenbridge.socket(opts);
})"""


@pytest.mark.parametrize("transport", ["sse", "ws"])
def test_an_expired_token_is_refreshed_once_and_the_answer_arrives_whole(
    page: Page, stack: Stack, transport: str
) -> None:
    # Given a generation and a stream token for it that expired an hour ago
    created = stack.create(model="echo", prompt="fresh tokens keep flowing")
    expired = _expired_token(stack, created["id"])
    page.goto("/")
    # When the browser client reads with it and a refresh callback
    result: dict[str, Any] = page.evaluate(READ, [transport, created, expired, API_KEY])
    # Then it asked for one new token and read the answer whole
    assert result == {"text": "fresh tokens keep flowing", "refreshed": 1}


def test_without_a_callback_an_expired_token_ends_with_its_error(page: Page, stack: Stack) -> None:
    created = stack.create(model="echo", prompt="no refresh")
    expired = _expired_token(stack, created["id"])
    page.goto("/")
    script = READ.replace("refreshToken:", "unused:")
    result: dict[str, Any] = page.evaluate(script, ["sse", created, expired, API_KEY])
    assert result == {"error": "token_expired", "refreshed": 0}

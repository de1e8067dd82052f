"""The browser client refreshes an expired stream token through its callback and reads the answer whole."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

from tests.browser.support import expired_token, missing
from tests.support.stack import API_KEY, Stack

if TYPE_CHECKING:
    from playwright.sync_api import Page

reason = missing()
if reason:
    pytest.skip(reason, allow_module_level=True)

pytestmark = [pytest.mark.browser, pytest.mark.e2e]


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
    expired = expired_token(stack, created["id"])
    page.goto("/")
    # When the browser client reads with it and a refresh callback
    result: dict[str, Any] = page.evaluate(READ, [transport, created, expired, API_KEY])
    # Then it asked for one new token and read the answer whole
    assert result == {"text": "fresh tokens keep flowing", "refreshed": 1}


def test_without_a_callback_an_expired_token_ends_with_its_error(page: Page, stack: Stack) -> None:
    created = stack.create(model="echo", prompt="no refresh")
    expired = expired_token(stack, created["id"])
    page.goto("/")
    script = READ.replace("refreshToken:", "unused:")
    result: dict[str, Any] = page.evaluate(script, ["sse", created, expired, API_KEY])
    assert result == {"error": "token_expired", "refreshed": 0}

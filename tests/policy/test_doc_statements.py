"""What docs/API.md and docs/security.md say about credentials, tokens and the dashboard is what the code does."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest

from app import create_app
from app.auth import SCOPES, Action, Authenticator
from app.errors import ApiError
from app.inputs import ROUTE_ACTIONS
from bridge.settings import Settings

DOCS = Path(__file__).resolve().parents[2] / "docs"
API = (DOCS / "API.md").read_text(encoding="utf-8")
SECURITY = (DOCS / "security.md").read_text(encoding="utf-8")


def _row(page: str, first_cell: str) -> str:
    """The table row whose first cell starts with ``first_cell``."""
    [row] = [line for line in page.splitlines() if line.startswith(f"| {first_cell}")]
    return row


def _section(page: str, heading: str) -> str:
    """The text under ``heading``, up to the next heading, on one line."""
    return " ".join(page.split(f"{heading}\n", 1)[1].split("\n#", 1)[0].split())


def test_a_stream_token_is_taken_in_the_query_string_only() -> None:
    assert "`?token=` only" in _row(API, "`Authorization`")
    auth = Authenticator(Settings(secret_key="s", api_keys="k"))
    with pytest.raises(ApiError) as info:
        auth.authenticate(f"Bearer {auth.stream_token(generation_id='gen_a')}", None)
    assert info.value.code == "invalid_credentials"


def test_a_refreshed_token_only_reads_as_the_contract_and_both_references_say() -> None:
    # The token of POST /v1/generations reads and cancels; the one of POST .../token (a refresh) only reads
    auth = Authenticator(Settings(secret_key="s", api_keys="k"))
    first = auth.authenticate(None, auth.stream_token(generation_id="gen_a"))
    assert first.may(Action.CANCEL) and first.may(Action.READ) and not first.may(Action.MINT)
    refreshed = auth.authenticate(None, auth.stream_token(generation_id="gen_a", read_only=True))
    assert refreshed.may(Action.READ) and not refreshed.may(Action.CANCEL) and not refreshed.may(Action.MINT)
    refresh = _section(API, "### `POST /v1/generations/{id}/token`")
    assert "read-only" in refresh and "cannot cancel" in refresh
    assert "The fresh token is read-only" in _section(SECURITY, "### Refreshing a token")


def test_a_reader_key_gets_the_dashboard_data_in_the_code_and_both_references() -> None:
    assert ROUTE_ACTIONS["pages.dashboard_data"] is Action.ACCOUNT and Action.ACCOUNT in SCOPES["reader"]
    assert "dashboard data" in _row(SECURITY, "`reader`")
    assert re.search(r"`reader` keys read, mint and use the account routes", API)
    assert "| account |" in _row(API, "`GET /dashboard/data`")


def test_the_dashboard_data_holds_what_the_reference_says(make_settings: Callable[..., Settings]) -> None:
    row = _row(API, "`GET /dashboard/data`")
    assert "dead letters" in row and "errors" not in row
    app = create_app(make_settings(auth_disabled=True, rate_limit=""))
    body = app.test_client().get("/dashboard/data").json
    assert body == {"dead_letters": {"total": 0, "recent": []}}

"""The audit trail: one JSON record per security-relevant action, on the logger ``tokenbridge.audit`` of web."""

from __future__ import annotations

import hashlib
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from bridge import dead_letters
from tests.support import wait_for
from tests.support.stack import ADMIN_KEY, API_KEY, API_KEY_OWNER, OTHER_KEY, READER_KEY, Stack
from tests.support.ws_client import Client, ConnectionClosed

pytestmark = pytest.mark.e2e


def _as(key: str, request_id: str | None = None) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}", **({"X-Request-ID": request_id} if request_id else {})}


def _audit(stack: Stack) -> list[dict[str, Any]]:
    """Every audit record web has written so far (its log is JSON lines, mixed with gunicorn's own lines)."""
    records = []
    # Split on newlines only: a value may hold a U+2028 (a path a fuzzer sent), which splitlines() would cut at.
    for line in (stack.logs / "web.log").read_text(errors="replace").split("\n"):
        if line.startswith("{") and '"tokenbridge.audit"' in line:
            records.append(orjson.loads(line))
    return records


def _recorded(stack: Stack, timeout_s: float = 10, **match: Any) -> dict[str, Any]:
    """The one audit record whose fields include ``match`` (waited for: a log line is written after the answer)."""

    def found() -> list[dict[str, Any]]:
        return [r for r in _audit(stack) if all(r.get(name) == value for name, value in match.items())]

    records = wait_for(found, timeout_s=timeout_s, interval_s=0.1, message=f"no audit record with {match}")
    assert len(records) == 1, records
    return records[0]


def _request_id() -> str:
    return f"audit-{uuid.uuid4().hex}"


def test_an_admin_reading_and_cancelling_another_owners_generation_is_recorded(stack: Stack) -> None:
    # Given a generation of the key "other"
    gen = stack.post("/v1/generations", {"model": "external", "prompt": "x"}, headers=_as(OTHER_KEY)).json()
    # When the admin key reads it and cancels it
    read, cancel = _request_id(), _request_id()
    assert httpx.get(stack.url(f"/v1/generations/{gen['id']}"), headers=_as(ADMIN_KEY, read)).status_code == 200
    answer = httpx.post(stack.url(f"/v1/generations/{gen['id']}/cancel"), headers=_as(ADMIN_KEY, cancel))
    assert answer.status_code == 202 and answer.headers["X-Request-ID"] == cancel
    # Then each is one record: who, what, on which generation of which owner, the outcome and the request id
    record = _recorded(stack, request_id=cancel)
    assert {k: record[k] for k in ("action", "actor", "scope", "generation_id", "owner", "outcome", "status")} == {
        "action": "admin.cancel",
        "actor": "ops",
        "scope": "admin",
        "generation_id": gen["id"],
        "owner": "other",
        "outcome": "ok",
        "status": 202,
    }
    assert _recorded(stack, request_id=read)["action"] == "admin.read"
    # And the owner's own reads are no audit matter
    mine = _request_id()
    httpx.get(stack.url(f"/v1/generations/{gen['id']}"), headers=_as(OTHER_KEY, mine))
    assert [r for r in _audit(stack) if r.get("request_id") == mine] == []


def test_an_admin_cancelling_over_the_websocket_is_recorded(stack: Stack) -> None:
    gen = stack.post("/v1/generations", {"model": "external", "prompt": "x"}, headers=_as(OTHER_KEY)).json()
    request_id = _request_id()
    url = stack.url(gen["ws_url"]).replace("http://", "ws://", 1)
    ws = Client.connect(url, headers=_as(ADMIN_KEY, request_id))
    ws.send('{"type": "cancel"}')
    with pytest.raises(ConnectionClosed):
        while True:
            ws.receive(timeout=10)
    cancel = _recorded(stack, request_id=request_id, action="admin.cancel")
    assert (cancel["actor"], cancel["owner"], cancel["outcome"], cancel["path"]) == (
        "ops",
        "other",
        "ok",
        f"/v1/generations/{gen['id']}/ws",
    )


def test_replaying_and_dropping_a_dead_letter_are_recorded(stack: Stack) -> None:
    # Given a dead letter of a generation of the key "other"
    gen = stack.post("/v1/generations", {"model": "external", "prompt": "x"}, headers=_as(OTHER_KEY)).json()
    client = stack.client()
    dead_letters.record(
        client,
        generation_id=gen["id"],
        entry_id="1-0",
        fields={"type": "token"},
        error="RuntimeError()",
        deliveries=5,
        consumer="c",
        held=False,
        max_length=1000,
    )
    letter = next(d for d in dead_letters.list_dead_letters(client, limit=100)[0] if d.generation_id == gen["id"])
    # When the admin tries to replay it (its generation is not held: refused) and then drops it
    replay, drop = _request_id(), _request_id()
    assert (
        httpx.post(stack.url(f"/v1/dead-letters/{letter.id}/replay"), headers=_as(ADMIN_KEY, replay)).status_code == 409
    )
    assert httpx.delete(stack.url(f"/v1/dead-letters/{letter.id}"), headers=_as(ADMIN_KEY, drop)).status_code == 200
    # Then both are recorded, with the dead letter, its generation and its owner, and how each ended
    for request_id, action, outcome in (
        (replay, "dead_letter.replay", "generation_finished"),
        (drop, "dead_letter.drop", "ok"),
    ):
        record = _recorded(stack, request_id=request_id)
        assert (record["action"], record["outcome"], record["actor"]) == (action, outcome, "ops")
        assert (record["dead_letter_id"], record["generation_id"], record["owner"]) == (letter.id, gen["id"], "other")


def test_refused_credentials_and_scopes_are_recorded_without_the_key(stack: Stack) -> None:
    wrong_key, wrong, token, scope = "sk-wrong-key-0123456789", _request_id(), _request_id(), _request_id()
    assert httpx.get(stack.url("/v1/stats"), headers=_as(wrong_key, wrong)).status_code == 401
    bad_token = httpx.get(
        stack.url("/v1/generations/gen_0123456789abcdef01234567"),
        params={"token": "not-a-token"},
        headers={"X-Request-ID": token},
    )
    assert bad_token.status_code == 401
    created = httpx.post(
        stack.url("/v1/generations"), json={"model": "echo", "prompt": "x"}, headers=_as(READER_KEY, scope)
    )
    assert created.status_code == 403
    refused = _recorded(stack, request_id=wrong)
    prefix = hashlib.sha256(wrong_key.encode()).hexdigest()[:10]
    assert (refused["action"], refused["outcome"], refused["credential"]) == (
        "auth.refused",
        "invalid_credentials",
        f"sha256:{prefix}",
    )
    assert (_recorded(stack, request_id=token)["credential"], _recorded(stack, request_id=token)["outcome"]) == (
        "stream_token",
        "invalid_token",
    )
    denied = _recorded(stack, request_id=scope)
    assert (denied["action"], denied["actor"], denied["actor_owner"], denied["outcome"]) == (
        "access.refused",
        "app-reader",
        API_KEY_OWNER,
        "insufficient_scope",
    )
    assert wrong_key not in (stack.logs / "web.log").read_text()


def test_minted_tokens_are_recorded_and_everything_one_key_did_is_one_filter(stack: Stack) -> None:
    gen = stack.create(model="echo", prompt="mint")
    minted, session = _request_id(), _request_id()
    assert httpx.post(stack.url(f"/v1/generations/{gen['id']}/token"), headers=_as(API_KEY, minted)).status_code == 200
    url = stack.url(f"/v1/sessions/{gen['session_id']}/token")
    assert httpx.post(url, headers=_as(API_KEY, session)).status_code == 200
    assert _recorded(stack, request_id=minted)["generation_id"] == gen["id"]
    assert _recorded(stack, request_id=session)["session_id"] == gen["session_id"]
    # The example of docs/security.md: everything the key did, by its name
    mine = [r for r in _audit(stack) if r.get("actor") == API_KEY_OWNER]
    assert {r["request_id"] for r in mine} >= {minted, session}


def test_a_keys_file_reload_is_recorded_with_the_names_it_changed(stack: Stack) -> None:
    keys_file = Path(stack.env["API_KEYS_FILE"])
    original = keys_file.read_text()
    name = f"audited-{uuid.uuid4().hex[:8]}"
    try:
        keys_file.write_text(original + f'\n[[keys]]\nname = "{name}"\nkey = "sk-audited-key-0123456789"\n')
        wait_for(
            lambda: httpx.get(stack.url("/v1/stats"), headers=_as("sk-audited-key-0123456789")).status_code == 200,
            timeout_s=10,
            interval_s=0.2,
            message="the new key was not read",
        )
        added = wait_for(
            lambda: [r for r in _audit(stack) if r.get("action") == "keys.reload" and name in r.get("added", [])],
            timeout_s=10,
            interval_s=0.1,
            message="no keys.reload record names the key added",
        )
        assert added[0]["outcome"] == "ok" and added[0]["removed"] == [] and "sk-audited-key" not in str(added)
    finally:
        keys_file.write_text(original)
    wait_for(
        lambda: any(r.get("action") == "keys.reload" and name in r.get("removed", []) for r in _audit(stack)),
        timeout_s=10,
        interval_s=0.2,
        message="no keys.reload record names the key removed",
        # pacing: a request now and then makes web look at the keys file again (at most once a second)
        step=lambda: (time.sleep(0.2), httpx.get(stack.url("/v1/stats"), headers=_as(API_KEY))),
    )

"""Ownership: who owns a session or a generation, and which callers see it (sessions on fakeredis)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import fakeredis
import orjson
import pytest

from app.auth import Action, Authenticator, KeyRing, Principal
from app.inputs import owner_of
from bridge import keys, streams
from bridge.settings import Settings

TTL_MS = 60_000


def _generation(client: fakeredis.FakeRedis, gid: str, session: str, indexed: bool = False, **meta: str) -> None:
    """A generation of ``session``; ``indexed``: listed as earlier versions did, in the session's index stream."""
    client.hset(keys.gen_meta(gid), mapping={"session_id": session, "request": orjson.dumps({}), **meta})
    if indexed:
        client.xadd(keys.session_index(session), {"generation_id": gid})
    else:
        client.rpush(keys.session_generations(session), gid)


def test_the_first_key_to_use_a_session_owns_it(fake_redis: fakeredis.FakeRedis) -> None:
    # Given a session started by app-a
    assert streams.claim_session(fake_redis, "s1", "app-a", TTL_MS)
    # When another owner tries to add to it, it is refused and the session stays app-a's
    assert not streams.claim_session(fake_redis, "s1", "app-b", TTL_MS)
    assert fake_redis.get(keys.session_owner("s1")) == "app-a"
    # And its owner may go on using it, which keeps the claim alive
    fake_redis.pexpire(keys.session_owner("s1"), 10)
    assert streams.claim_session(fake_redis, "s1", "app-a", TTL_MS)
    assert fake_redis.pttl(keys.session_owner("s1")) > TTL_MS - 1000


def test_a_session_whose_claim_expired_is_free_again(fake_redis: fakeredis.FakeRedis) -> None:
    streams.claim_session(fake_redis, "s1", "app-a", TTL_MS)
    fake_redis.delete(keys.session_owner("s1"))
    assert streams.claim_session(fake_redis, "s1", "app-b", TTL_MS)


def test_a_session_without_generations_does_not_exist(fake_redis: fakeredis.FakeRedis) -> None:
    assert streams.session_owner(fake_redis, "s1") is None
    streams.claim_session(fake_redis, "s1", "app-a", TTL_MS)
    assert streams.session_owner(fake_redis, "s1") is None
    _generation(fake_redis, "gen_1", "s1", owner="app-a")
    assert streams.session_owner(fake_redis, "s1") == "app-a"


@pytest.mark.parametrize(
    ("meta", "owner"),
    [({"owner": "app-a", "api_key": "key-1"}, "app-a"), ({"api_key": "key-1"}, "key-1"), ({}, "")],
)
def test_a_session_from_before_owners_belongs_to_its_first_generations_owner(
    fake_redis: fakeredis.FakeRedis, meta: dict[str, str], owner: str
) -> None:
    _generation(fake_redis, "gen_1", "s1", **meta)
    _generation(fake_redis, "gen_2", "s1", owner="someone-later")
    assert streams.session_owner(fake_redis, "s1") == owner
    assert owner_of(meta) == owner


def test_a_session_indexed_by_an_earlier_version_keeps_its_owner_and_lists_its_generations_after_newer_ones(
    fake_redis: fakeredis.FakeRedis,
) -> None:
    # Given a session whose first two generations an earlier version indexed in a stream
    _generation(fake_redis, "gen_1", "s1", indexed=True, owner="app-a")
    _generation(fake_redis, "gen_2", "s1", indexed=True, owner="app-a")
    # When a generation is added to it now
    _generation(fake_redis, "gen_3", "s1", owner="app-b")
    # Then the first generation still decides the owner, and all three are listed, newest first
    assert streams.session_owner(fake_redis, "s1") == "app-a"
    assert streams.session_generation_ids(fake_redis, "s1", limit=10) == ["gen_3", "gen_2", "gen_1"]
    assert streams.session_generation_ids(fake_redis, "s1", limit=2) == ["gen_3", "gen_2"]


APP_A = Principal("api_key", name="a-1", owner="app-a", scope="full")
APP_A_READER = Principal("api_key", name="a-2", owner="app-a", scope="reader")
APP_B = Principal("api_key", name="b-1", owner="app-b", scope="full")
ADMIN = Principal("api_key", name="ops", owner="ops", scope="admin")
TOKEN = Principal("stream_token", name="stream_token", generation_id="gen_1")
ANONYMOUS = Principal("anonymous", name="anonymous", owner="anonymous", scope="admin")


@pytest.mark.parametrize(
    ("principal", "sees"),
    [
        (APP_A, True),
        (APP_A_READER, True),  # another key of the same owner
        (APP_B, False),
        (ADMIN, True),
        (TOKEN, True),  # checked by id instead
        (ANONYMOUS, True),  # authentication disabled
    ],
)
def test_who_sees_a_resource_of_app_a(principal: Principal, sees: bool) -> None:
    assert principal.owns("app-a") is sees


@pytest.mark.parametrize("owner", ["", None, "APP-A", "app-a "])
def test_no_near_miss_of_an_owner_is_the_owner(owner: str | None) -> None:
    assert not APP_A.owns(owner)


def test_a_stream_token_reads_only_its_own_generation_or_session() -> None:
    assert TOKEN.may_read_generation("gen_1") and not TOKEN.may_read_generation("gen_2")
    assert not TOKEN.may_read_session("s1")
    session_token = Principal("stream_token", session_id="s1")
    assert session_token.may_read_session("s1") and not session_token.may_read_session("s2")
    assert APP_B.may_read_generation("gen_1") and APP_B.may_read_session("s1")  # keys: decided by owner


@pytest.mark.parametrize(
    ("scope", "allowed"),
    [
        ("full", set(Action) - {Action.ADMIN}),
        ("reader", {Action.READ, Action.MINT, Action.ACCOUNT}),
        ("producer", {Action.FEED}),
        ("admin", set(Action)),
    ],
)
def test_each_scope_allows_its_actions_and_no_other(scope: str, allowed: set[Action]) -> None:
    principal = Principal("api_key", name="k", owner="o", scope=scope)  # type: ignore[arg-type]
    assert {action for action in Action if principal.may(action)} == allowed


def _keys_file(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


def test_two_keys_of_one_owner_share_its_generations_and_a_stored_hash_matches_its_key(tmp_path: Path) -> None:
    # Given an owner with an old key kept as a hash and a new key, plus another owner's key
    old = "old-secret-of-app-a"
    keys_file = _keys_file(
        tmp_path / "keys.toml",
        f"""
[[keys]]
name = "a-old"
key_sha256 = "{hashlib.sha256(old.encode()).hexdigest()}"
owner = "app-a"

[[keys]]
name = "a-new"
key = "new-secret-of-app-a"
owner = "app-a"
scope = "reader"

[[keys]]
name = "b"
key = "secret-of-app-b-0"
""",
    )
    settings = Settings(secret_key="s", api_keys="", api_keys_file=keys_file)
    ring = KeyRing(settings)
    # Then each secret finds its own entry, and nothing else does
    matched = ring.match(old)
    assert matched is not None and matched.name == "a-old"
    assert ring.match("new-secret-of-app-a") is not None
    assert ring.match(hashlib.sha256(old.encode()).hexdigest()) is None  # the hash is not a key
    assert ring.match("new-secret-of-app-") is None
    # And both keys of app-a own the same things, which app-b's key does not
    auth = Authenticator(settings)
    a_old = auth.authenticate(f"Bearer {old}", None)
    a_new = auth.authenticate("Bearer new-secret-of-app-a", None)
    b = auth.authenticate("Bearer secret-of-app-b-0", None)
    assert a_old.owner == a_new.owner == "app-a" and b.owner == "b"
    assert a_new.owns(a_old.owner) and not b.owns(a_old.owner) and not a_old.owns(b.owner)

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from app import auth as auth_module
from app.auth import Action, Authenticator, KeyConfigError
from app.errors import ApiError
from bridge.settings import Settings


def _auth(**kw: object) -> Authenticator:
    values: dict[str, object] = {"secret_key": "s3cret", "api_keys": "alpha,ops:beta", "stream_token_ttl_s": 60}
    values.update(kw)
    return Authenticator(Settings(**values))  # type: ignore[arg-type]


def test_api_keys_authenticate_and_named_keys_carry_their_name() -> None:
    auth = _auth()
    assert auth.authenticate("Bearer beta", None).name == "ops"
    assert auth.authenticate("Bearer alpha", None).kind == "api_key"


@pytest.mark.parametrize("header", ["Bearer wrong", "Basic alpha", "Bearer ", "alpha", "Bearer ops:beta"])
def test_bad_credentials_are_401(header: str) -> None:
    with pytest.raises(ApiError) as info:
        _auth().authenticate(header, None)
    assert info.value.status == 401


def test_no_credentials_is_401_unless_auth_is_disabled() -> None:
    with pytest.raises(ApiError) as info:
        _auth().authenticate(None, None)
    assert info.value.code == "missing_credentials"
    assert _auth(auth_disabled=True).authenticate(None, None).kind == "anonymous"


def test_stream_tokens_are_scoped_to_one_generation() -> None:
    auth = _auth()
    principal = auth.authenticate(None, auth.stream_token(generation_id="gen_a"))
    assert principal.may_read_generation("gen_a")
    assert not principal.may_read_generation("gen_b")
    assert not principal.may_read_session("gen_a")


def test_tampered_token_or_other_secret_is_401() -> None:
    token = _auth().stream_token(generation_id="gen_a")
    tampered = token[:-2] + ("AA" if not token.endswith("AA") else "BB")
    for bad in (tampered, _auth(secret_key="other").stream_token(generation_id="gen_a")):
        with pytest.raises(ApiError) as info:
            _auth().authenticate(None, bad)
        assert info.value.code == "invalid_token"


def test_expired_token_is_401(monkeypatch: pytest.MonkeyPatch) -> None:
    import itsdangerous.timed

    auth = _auth()
    token = auth.stream_token(generation_id="gen_a")
    real_time = itsdangerous.timed.time.time
    monkeypatch.setattr(itsdangerous.timed.time, "time", lambda: real_time() + 61)
    with pytest.raises(ApiError) as info:
        auth.authenticate(None, token)
    assert info.value.code == "token_expired"


# -- scopes, owners and the keys file ----------------------------------------------------------------


def _keys_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "keys.toml"
    path.write_text(text)
    return path


def test_scopes_allow_their_actions_only() -> None:
    auth = _auth(api_keys="app:k1,ops:k2,view:k3,feed:k4", api_key_scopes="ops=admin, view=reader,feed=producer")
    app, ops, view, feed = (auth.authenticate(f"Bearer {k}", None) for k in ("k1", "k2", "k3", "k4"))
    assert app.may(Action.CREATE) and app.may(Action.FEED) and not app.may(Action.ADMIN)
    assert ops.may(Action.ADMIN) and ops.owns("someone-else")
    assert view.may(Action.READ) and view.may(Action.MINT) and not view.may(Action.CREATE)
    assert feed.may(Action.FEED) and not feed.may(Action.READ)
    assert app.owns("app") and not app.owns("ops")


def test_a_stream_token_may_only_read_and_cancel() -> None:
    auth = _auth()
    principal = auth.authenticate(None, auth.stream_token(session_id="s1"))
    assert principal.may(Action.READ) and principal.may(Action.CANCEL)
    assert not any(principal.may(action) for action in Action if action not in (Action.READ, Action.CANCEL))


@pytest.mark.parametrize("scopes", ["ops=root", "ops", "=admin", "opz=admin"])
def test_an_unknown_scope_or_key_name_is_refused_at_start(scopes: str) -> None:
    with pytest.raises(KeyConfigError):
        _auth(api_keys="alpha,ops:beta", api_key_scopes=scopes)


def test_the_keys_file_gives_names_owners_and_scopes_and_may_hold_only_a_hash(tmp_path: Path) -> None:
    digest = hashlib.sha256(b"reader-secret-0000").hexdigest()
    path = _keys_file(
        tmp_path,
        f"""
[[keys]]
name = "reader"
key_sha256 = "{digest}"
owner = "ops"
scope = "reader"
""",
    )
    auth = _auth(api_keys_file=str(path))
    principal = auth.authenticate("Bearer reader-secret-0000", None)
    assert (principal.name, principal.owner, principal.scope) == ("reader", "ops", "reader")
    # The keys of API_KEYS keep working beside the file's
    assert auth.authenticate("Bearer alpha", None).kind == "api_key"


@pytest.mark.parametrize(
    "text",
    [
        '[[keys]]\nname = "a"\nkey = "short"\n',  # keys of the file are at least 16 characters
        '[[keys]]\nname = "a"\n',  # no secret
        '[[keys]]\nname = "a"\nkey = "0123456789abcdef"\nscope = "root"\n',
        "[[keys]\nbroken",
    ],
)
def test_a_bad_keys_file_is_refused_at_start(tmp_path: Path, text: str) -> None:
    with pytest.raises(KeyConfigError):
        _auth(api_keys_file=str(_keys_file(tmp_path, text)))


def test_the_keys_file_is_read_again_when_it_changes_and_a_broken_one_keeps_the_old_keys(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(auth_module, "KEYS_FILE_CHECK_S", 0.0)
    path = _keys_file(tmp_path, '[[keys]]\nname = "old"\nkey = "old-key-0123456789"\n')
    auth = _auth(api_keys_file=str(path))
    assert auth.authenticate("Bearer old-key-0123456789", None).name == "old"
    # When the key is rotated in the file
    path.write_text('[[keys]]\nname = "new"\nkey = "new-key-0123456789"\n')
    # Then the new key works and the old one is refused, without a restart
    assert auth.authenticate("Bearer new-key-0123456789", None).name == "new"
    with pytest.raises(ApiError):
        auth.authenticate("Bearer old-key-0123456789", None)
    # And a broken file leaves the keys as they were
    path.write_text("[[keys]\nbroken and longer")
    assert auth.authenticate("Bearer new-key-0123456789", None).name == "new"

from __future__ import annotations

import pytest

from app.auth import Authenticator
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

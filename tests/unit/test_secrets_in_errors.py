"""Errors about keys and settings name the field and the entry, never the value: a value may be a secret."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from pydantic import ValidationError

from app import auth as auth_module
from app.auth import Authenticator, KeyConfigError
from bridge.models import ModelRegistryError, load_registry
from bridge.settings import Settings

# Key-like values in the wrong place: none of them may appear in an error or a log line.
SHORT_KEY = "hk_short"
NEIGHBOUR_KEY = "sk-live-neighbour-0123456789"
MISSPELT_KEY = "sk-live-misspelt-0123456789"
NOT_A_HASH = "sk-live-not-a-hash-0123456789"
PASTED_KEY = "sk-live-pasted-as-entry-0123456789"
SECRETS = (SHORT_KEY, NEIGHBOUR_KEY, MISSPELT_KEY, NOT_A_HASH, PASTED_KEY)

BROKEN_KEYS_FILE = f"""
keys = [
  {{name = "short", key = "{SHORT_KEY}"}},
  {{name = "typo", key = "{NEIGHBOUR_KEY}", scpoe = "admin"}},
  {{name = "misspelt", kye = "{MISSPELT_KEY}"}},
  {{name = "hashed", key_sha256 = "{NOT_A_HASH}"}},
  "{PASTED_KEY}",
]
"""


def _auth(**kw: object) -> Authenticator:
    return Authenticator(Settings(secret_key="s3cret", **kw))  # type: ignore[arg-type]


def test_a_keys_file_error_names_each_entry_and_field_and_no_value(tmp_path: Path) -> None:
    path = tmp_path / "keys.toml"
    path.write_text(BROKEN_KEYS_FILE)
    with pytest.raises(KeyConfigError) as info:
        _auth(api_keys_file=str(path))
    message = str(info.value)
    assert [secret for secret in SECRETS if secret in message] == []
    assert "keys entry 1 (name 'short'): key: String should have at least 16 characters" in message
    assert "keys entry 2 (name 'typo'): scpoe: Extra inputs are not permitted" in message
    assert "keys entry 3 (name 'misspelt'): kye: Extra inputs are not permitted" in message
    assert "keys entry 4 (name 'hashed'): key_sha256: String should match pattern" in message
    assert "keys entry 5: entry: Input should be a valid dictionary" in message


def test_a_broken_reload_logs_positions_and_fields_and_no_value(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(auth_module, "KEYS_FILE_CHECK_S", 0.0)
    path = tmp_path / "keys.toml"
    path.write_text('[[keys]]\nname = "app"\nkey = "app-key-0123456789"\n')
    auth = _auth(api_keys_file=str(path))
    path.write_text(BROKEN_KEYS_FILE)
    with caplog.at_level(logging.INFO):
        assert auth.authenticate("Bearer app-key-0123456789", None).name == "app"
    assert "keys entry 2 (name 'typo'): scpoe" in caplog.text
    assert [secret for secret in SECRETS if secret in caplog.text] == []


def test_api_key_scopes_name_a_bad_entry_by_its_position() -> None:
    with pytest.raises(KeyConfigError) as info:
        _auth(api_keys=f"app:{NEIGHBOUR_KEY}", api_key_scopes=f"app=reader,{PASTED_KEY}")
    assert "entry 2" in str(info.value) and PASTED_KEY not in str(info.value)


@pytest.mark.parametrize(
    "env",
    [
        {"REDIS_PORT": "pw-redis-secret"},  # a field error
        {"REDIS_URL": "redis://:pw-redis-secret@h:1/0", "CONSUMER_HEARTBEAT_MS": "5000"},  # a model error
    ],
)
def test_a_settings_error_names_the_variable_and_no_value(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> None:
    for name, value in {**env, "SECRET_KEY": "sk-secret-key-value", "API_KEYS": NEIGHBOUR_KEY}.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError) as info:
        Settings()
    text = str(info.value)
    assert [secret for secret in ("pw-redis-secret", "sk-secret-key-value", NEIGHBOUR_KEY) if secret in text] == []
    assert "input_value" not in text  # not even the beginning of one (a model error showed the whole input, cut)


def test_a_models_file_error_keeps_a_providers_key_out(tmp_path: Path) -> None:
    path = tmp_path / "models.toml"
    path.write_text(
        '[models.x]\nprovider = "openai"\nbase_url = "http://x"\ntimeout_s = "soon"\n'
        'headers = {Authorization = "Bearer sk-provider-secret"}\nmisspelt = "sk-provider-secret"\n'
    )
    with pytest.raises(ModelRegistryError) as info:
        load_registry(str(path))
    assert "timeout_s" in str(info.value) and "sk-provider-secret" not in str(info.value)

"""Settings of ``web``: its port, API keys, owners, scopes and stream tokens."""

from __future__ import annotations

from functools import cached_property

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class WebKeySettings(BaseSettings):
    """``web``: keys and tokens."""

    # A validation error names the variable, never its value (which may be a password or a key).
    model_config = SettingsConfigDict(env_prefix="", case_sensitive=False, extra="ignore", hide_input_in_errors=True)

    port: int = Field(
        default=8000,
        description="Port `web` (and `flower`) binds to, read by the Procfile commands.",
    )
    api_keys: str = Field(
        default="",
        description="Comma-separated API keys, accepted as `Authorization: Bearer <key>`. An entry `name:key` names "
        "its key (the name appears in logs and names its limits); a bare key is named `key-` and the first 10 hex "
        "digits of its SHA-256. An entry that contains `:` is always read as `name:key`. Empty (and no "
        "`API_KEYS_FILE`): every `/v1` request gets 401, and `web` logs a warning.",
    )
    # TOML file of [[keys]] (name, key or key_sha256, owner, scope), read again when it changes.
    api_keys_file: str | None = Field(
        default=None,
        description="TOML file of `[[keys]]` (`name`, `key` or `key_sha256`, `owner`, `scope`), used beside "
        "`API_KEYS` and read again within a second of a change. See [security.md](security.md).",
    )
    # name=scope pairs for the keys of API_KEYS (scopes: full, reader, producer, admin; default full).
    api_key_scopes: str = Field(
        default="",
        description="`name=scope` pairs for `API_KEYS` entries: `full` (default), `reader`, `producer`, `admin`. A "
        "name that no entry has stops `web` at start.",
    )
    auth_disabled: bool = Field(
        default=False,
        description="`1`/`true`: every `/v1` request is allowed without credentials, as an administrator. Development "
        "only; `web` logs a warning at start. Without `SECRET_KEY`, stream tokens are then signed with a fixed "
        "development key.",
    )
    secret_key: str | None = Field(
        default=None,
        description="Signs stream tokens; every `web` process needs the same one. `web` requires it unless "
        "`AUTH_DISABLED=1`.",
    )
    # A bearer token for the operations endpoints (/metrics, the checks of /readyz); unset: they are public.
    ops_token: str | None = Field(
        default=None,
        description="Bearer token that `/metrics` and the details (`checks`) of `/readyz` require, as "
        "`Authorization: Bearer <token>`; an API key with the `admin` scope is accepted too. The bare status of "
        "`/readyz` stays public for load balancers. Unset: both are public, and `web` logs a warning at start "
        "([security.md](security.md#operations-endpoints)).",
    )
    stream_token_ttl_s: int = Field(
        default=3600,
        ge=1,
        description="Lifetime of a stream token, in seconds.",
    )

    @cached_property
    def api_key_set(self) -> frozenset[str]:
        return frozenset(key.strip() for key in self.api_keys.split(",") if key.strip())

    @property
    def signing_key(self) -> str:
        # With AUTH_DISABLED and no SECRET_KEY, tokens are still signed, with a fixed development key.
        return self.secret_key or "tokenbridge-development-only"

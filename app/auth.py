"""Who may call, and what they may do.

Callers are API keys (``Authorization: Bearer``) and signed, expiring stream tokens (``?token=``). A key has
a name, an owner and a scope:

- the **owner** (the key's name unless a keys file says otherwise) owns what the key creates: another owner's
  generations and sessions are answered with 404, as if they did not exist;
- the **scope** says which actions the key may take (``SCOPES``); ``admin`` sees every owner's resources.

Keys come from ``API_KEYS`` (``key`` or ``name:key``, scopes from ``API_KEY_SCOPES``) and from
``API_KEYS_FILE`` (TOML), which is read again when it changes: keys rotate without a restart.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
import threading
import time
import tomllib
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Literal, cast

from itsdangerous import BadSignature, SignatureExpired, URLSafeTimedSerializer
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from app import audit
from app.errors import ApiError
from bridge.budgets import Budget
from bridge.settings import Settings

logger = logging.getLogger(__name__)

_SALT = "tokenbridge.stream-token.v1"
_OPS_CREDENTIALS = "Send 'Authorization: Bearer <OPS_TOKEN>' (or an API key with the admin scope)."
# How often the keys file's modification time is looked at (a stat per request would do, but need not).
KEYS_FILE_CHECK_S = 1.0


class Action(StrEnum):
    """What a route does, for the scope check (``ROUTE_ACTIONS`` maps each route to one)."""

    CREATE = "create"  # start generations
    READ = "read"  # a generation's record and events, a session's events and generations
    CANCEL = "cancel"
    FEED = "feed"  # tokens and completion of external generations
    MINT = "mint"  # new stream tokens
    ACCOUNT = "account"  # models, statistics, dashboard data
    ADMIN = "admin"  # dead letters


SCOPES: dict[str, frozenset[Action]] = {
    "full": frozenset(Action) - {Action.ADMIN},
    "reader": frozenset({Action.READ, Action.MINT, Action.ACCOUNT}),
    "producer": frozenset({Action.FEED}),
    "admin": frozenset(Action),
}
Scope = Literal["full", "reader", "producer", "admin"]
DEFAULT_SCOPE: Scope = "full"


@dataclass(frozen=True, slots=True)
class Principal:
    """The caller: an API key, a stream token (one generation or one session), or anyone (auth disabled)."""

    kind: Literal["api_key", "stream_token", "anonymous"]
    name: str = ""
    owner: str = ""
    scope: Scope = DEFAULT_SCOPE
    generation_id: str | None = None
    session_id: str | None = None
    budget: Budget = field(default_factory=Budget)
    # A stream token from POST .../token: it reads, and nothing more (the API contract's "read-only").
    read_only: bool = False

    @property
    def sees_everything(self) -> bool:
        return self.kind == "anonymous" or self.scope == "admin"

    def may(self, action: Action) -> bool:
        if self.kind == "stream_token":
            # A browser holding a generation's first token may read it and stop it; a refreshed one only reads.
            return action is Action.READ or (action is Action.CANCEL and not self.read_only)
        return self.kind == "anonymous" or action in SCOPES[self.scope]

    def owns(self, owner: str | None) -> bool:
        """Whether a resource of ``owner`` is visible to this caller (stream tokens are checked by id)."""
        return self.sees_everything or self.kind == "stream_token" or owner == self.owner

    def may_read_generation(self, generation_id: str) -> bool:
        return self.kind != "stream_token" or self.generation_id == generation_id

    def may_read_session(self, session_id: str) -> bool:
        return self.kind != "stream_token" or self.session_id == session_id


_NAME_PATTERN = r"^[A-Za-z0-9_.@-]+$"


class KeyEntry(BaseModel):
    """One key of the keys file: the key itself or its SHA-256 (hex), a name, an owner and a scope."""

    # A validation error names the field, never its value: a misspelt field may sit beside a real key.
    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)
    name: str = Field(min_length=1, max_length=64, pattern=_NAME_PATTERN)
    key: str | None = Field(default=None, min_length=16)
    key_sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    owner: str | None = Field(default=None, min_length=1, max_length=64, pattern=_NAME_PATTERN)
    scope: Scope = DEFAULT_SCOPE
    # Token budgets of this key (default TOKEN_BUDGET_PER_MINUTE / TOKEN_BUDGET_PER_DAY; 0: none).
    tokens_per_minute: int | None = Field(default=None, ge=0)
    tokens_per_day: int | None = Field(default=None, ge=0)

    @model_validator(mode="after")
    def _one_secret(self) -> KeyEntry:
        if (self.key is None) == (self.key_sha256 is None):
            raise ValueError("give exactly one of key and key_sha256")
        return self

    @property
    def digest(self) -> bytes:
        return bytes.fromhex(self.key_sha256) if self.key_sha256 else _digest(self.key or "")


class KeyConfigError(ValueError):
    """Raised when API_KEYS, API_KEY_SCOPES or the keys file is invalid; its message never holds a key."""


def _digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


def load_keys_file(path: str) -> list[KeyEntry]:
    """The ``[[keys]]`` of a TOML keys file; raises KeyConfigError (nothing half-read)."""
    try:
        document = tomllib.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise KeyConfigError(f"cannot read API_KEYS_FILE {path}: {exc}") from exc
    entries = document.get("keys", [])
    if not isinstance(entries, list):
        raise KeyConfigError(f"{path}: 'keys' must be an array of tables ([[keys]])")
    loaded, problems = [], []
    for position, entry in enumerate(entries, start=1):
        try:
            loaded.append(KeyEntry.model_validate(entry))
        except ValidationError as exc:
            problems.extend(_entry_problems(position, entry, exc))
    if problems:
        raise KeyConfigError(f"{path}: {'; '.join(problems)}")
    return loaded


def _entry_problems(position: int, entry: object, exc: ValidationError) -> list[str]:
    """Each problem of one ``[[keys]]`` entry by its position, name and field: never a value, which may be a key."""
    name = entry.get("name") if isinstance(entry, dict) else None
    label = f"keys entry {position}"
    if isinstance(name, str) and len(name) <= 64 and re.match(_NAME_PATTERN, name):
        label += f" (name {name!r})"
    return [
        f"{label}: {'.'.join(str(part) for part in error['loc']) or 'entry'}: {error['msg']}"
        for error in exc.errors(include_url=False, include_context=False, include_input=False)
    ]


def env_keys(settings: Settings) -> list[KeyEntry]:
    """The keys of ``API_KEYS`` with their scopes from ``API_KEY_SCOPES``; raises KeyConfigError."""
    scopes: dict[str, Scope] = {}
    for position, item in enumerate(settings.api_key_scopes.split(","), start=1):
        name, sep, scope = item.strip().partition("=")
        if not item.strip():
            continue
        if not sep or not name.strip() or scope.strip() not in SCOPES:
            # By position: an entry that is not a name=scope pair may be a key pasted in the wrong place.
            raise KeyConfigError(f"API_KEY_SCOPES: entry {position} is not name=scope (scopes: {', '.join(SCOPES)})")
        scopes[name.strip()] = cast(Scope, scope.strip())
    entries = []
    for entry in sorted(settings.api_key_set):
        # ``name:key`` names a key for logs, limits and ownership; a bare key gets a stable name derived from
        # a hash of it (never the key itself).
        name, sep, key = entry.partition(":")
        if not sep:
            name, key = f"key-{hashlib.sha256(entry.encode()).hexdigest()[:10]}", entry
        entries.append(
            KeyEntry.model_construct(
                name=name,
                key=key,
                key_sha256=None,
                owner=None,
                scope=scopes.get(name, DEFAULT_SCOPE),
                tokens_per_minute=None,
                tokens_per_day=None,
            )
        )
    unknown = sorted(set(scopes) - {entry.name for entry in entries})
    if unknown:
        # A misspelt name would leave its key with the default scope: refuse to start instead.
        raise KeyConfigError(f"API_KEY_SCOPES names keys that API_KEYS does not name: {', '.join(unknown)}")
    return entries


def key_changes(before: list[KeyEntry], after: list[KeyEntry]) -> dict[str, list[str]]:
    """The names of the keys added, removed and changed (key, owner, scope or budget) from ``before`` to ``after``."""
    old, new = {entry.name: entry for entry in before}, {entry.name: entry for entry in after}
    return {
        "added": sorted(new.keys() - old.keys()),
        "removed": sorted(old.keys() - new.keys()),
        "changed": sorted(name for name in old.keys() & new.keys() if old[name] != new[name]),
    }


class KeyRing:
    """The accepted keys: ``API_KEYS`` plus the keys file, read again when the file changes."""

    def __init__(self, settings: Settings) -> None:
        self._env = env_keys(settings)
        self._file = settings.api_keys_file
        self._lock = threading.Lock()
        self._checked_at = 0.0
        self._stamp: tuple[int, int] | None = None
        self._entries: list[KeyEntry] = list(self._env)
        if self._file:
            self._entries = self._env + load_keys_file(self._file)  # a broken file at start is an error
            self._stamp = self._file_stamp()
            self._checked_at = time.monotonic()

    def __len__(self) -> int:
        return len(self.entries())

    def entries(self) -> list[KeyEntry]:
        if self._file and time.monotonic() - self._checked_at >= KEYS_FILE_CHECK_S:
            self._reload_if_changed()
        return self._entries

    def _file_stamp(self) -> tuple[int, int] | None:
        try:
            stat = os.stat(self._file or "")
        except OSError:
            return None
        return stat.st_mtime_ns, stat.st_size

    def _reload_if_changed(self) -> None:
        with self._lock:
            self._checked_at = time.monotonic()
            stamp = self._file_stamp()
            if stamp == self._stamp:
                return
            self._stamp = stamp
            try:
                loaded = load_keys_file(self._file or "")
            except KeyConfigError as exc:
                # Keep serving with the keys we had: a typo must not lock every client out.
                logger.error("%s; keeping the %s keys loaded before.", exc, len(self._entries))
                audit.record("keys.reload", "invalid", file=self._file, error=str(exc))
                return
            changes = key_changes(self._entries[len(self._env) :], loaded)
            self._entries = self._env + loaded
            logger.info("API_KEYS_FILE %s read again: %s keys.", self._file, len(self._entries))
            audit.record("keys.reload", "ok", file=self._file, **changes)

    def match(self, credential: str) -> KeyEntry | None:
        given = _digest(credential)
        found: KeyEntry | None = None
        # Compare against every key in constant time, so timing reveals neither a key nor its position.
        for entry in self.entries():
            if hmac.compare_digest(given, entry.digest):
                found = entry
        return found


class Authenticator:
    def __init__(self, settings: Settings) -> None:
        self.disabled = settings.auth_disabled
        self.ttl_s = settings.stream_token_ttl_s
        self._serializer = URLSafeTimedSerializer(settings.signing_key, salt=_SALT)
        self.keys = KeyRing(settings)
        self.budget = Budget(settings.token_budget_per_minute, settings.token_budget_per_day)
        self._ops_digest = _digest(settings.ops_token) if settings.ops_token else None

    @property
    def ops_protected(self) -> bool:
        """Whether the operations endpoints need credentials (``OPS_TOKEN`` is set)."""
        return self._ops_digest is not None

    def require_ops(self, authorization: str | None) -> None:
        """Let ``OPS_TOKEN`` or an ``admin`` key through to ``/metrics`` and ``/readyz``'s checks (anyone without
        ``OPS_TOKEN``); raises ApiError 401 (with ``WWW-Authenticate: Bearer``) or 403. ``AUTH_DISABLED`` does not
        open them."""
        if self._ops_digest is None:
            return
        challenge = {"WWW-Authenticate": "Bearer"}
        if not authorization:
            raise ApiError(401, "missing_credentials", _OPS_CREDENTIALS, headers=challenge)
        scheme, _, credential = authorization.partition(" ")
        if scheme.lower() != "bearer" or not credential.strip():
            raise ApiError(401, "invalid_credentials", _OPS_CREDENTIALS, headers=challenge)
        # Both comparisons run whatever the first finds, each in constant time.
        is_ops_token = hmac.compare_digest(_digest(credential.strip()), self._ops_digest)
        entry = self.keys.match(credential.strip())
        if is_ops_token or (entry is not None and entry.scope == "admin"):
            return
        if entry is not None:
            audit.note(actor=entry.name, actor_owner=entry.owner or entry.name, scope=entry.scope)
            message = f"This API key (scope {entry.scope!r}) may not read operations data."
            raise ApiError(403, "insufficient_scope", message)
        message = "The token is neither OPS_TOKEN nor an API key with the admin scope."
        raise ApiError(401, "invalid_credentials", message, headers=challenge)

    def stream_token(
        self, *, generation_id: str | None = None, session_id: str | None = None, read_only: bool = False
    ) -> str:
        """A token for one generation or session: the one POST /v1/generations returns reads and cancels it; a
        ``read_only`` one (from the token routes) only reads."""
        payload: dict[str, str | int | None] = {"g": generation_id} if generation_id else {"s": session_id}
        if read_only:
            payload["ro"] = 1
        return str(self._serializer.dumps(payload))

    def token_expires_at(self) -> int:
        """When a token minted now expires (UNIX seconds)."""
        return int(time.time()) + self.ttl_s

    def authenticate(self, authorization: str | None, token: str | None) -> Principal:
        """Identify the caller from the Authorization header or a stream token; raises ApiError 401."""
        if authorization:
            scheme, _, credential = authorization.partition(" ")
            if scheme.lower() != "bearer" or not credential.strip():
                raise ApiError(401, "invalid_credentials", "Use 'Authorization: Bearer <api key>'.")
            entry = self.keys.match(credential.strip())
            if entry is not None:
                budget = Budget(
                    self.budget.per_minute if entry.tokens_per_minute is None else entry.tokens_per_minute,
                    self.budget.per_day if entry.tokens_per_day is None else entry.tokens_per_day,
                )
                owner = entry.owner or entry.name
                return Principal("api_key", name=entry.name, owner=owner, scope=entry.scope, budget=budget)
            if not self.disabled:
                raise ApiError(401, "invalid_credentials", "The API key is not valid.")
        if token:
            return self._verify(token)
        if self.disabled:
            return Principal("anonymous", name="anonymous", owner="anonymous", scope="admin")
        raise ApiError(401, "missing_credentials", "Send 'Authorization: Bearer <api key>' or ?token=<stream token>.")

    def key_name(self, authorization: str | None) -> str | None:
        """The name of the API key in an Authorization header, or None (for rate limiting: no errors)."""
        if not authorization:
            return None
        scheme, _, credential = authorization.partition(" ")
        if scheme.lower() != "bearer":
            return None
        entry = self.keys.match(credential.strip())
        return entry.name if entry else None

    def _verify(self, token: str) -> Principal:
        try:
            payload = self._serializer.loads(token, max_age=self.ttl_s)
        except SignatureExpired:
            raise ApiError(401, "token_expired", "The stream token has expired; ask for a new one.") from None
        except BadSignature:
            raise ApiError(401, "invalid_token", "The stream token is not valid.") from None
        if not isinstance(payload, dict):
            raise ApiError(401, "invalid_token", "The stream token is not valid.")
        return Principal(
            "stream_token",
            name="stream_token",
            generation_id=payload.get("g"),
            session_id=payload.get("s"),
            read_only=bool(payload.get("ro")),
        )

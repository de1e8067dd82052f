"""Who may call: API keys (``Authorization: Bearer``) and signed, expiring stream tokens (``?token=``)."""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from typing import Literal

from itsdangerous import BadSignature, SignatureExpired, URLSafeTimedSerializer

from app.errors import ApiError
from bridge.settings import Settings

_SALT = "tokenbridge.stream-token.v1"


@dataclass(frozen=True, slots=True)
class Principal:
    """The caller: an API key (any resource) or a stream token (one generation or one session)."""

    kind: Literal["api_key", "stream_token", "anonymous"]
    name: str = ""
    generation_id: str | None = None
    session_id: str | None = None

    def may_read_generation(self, generation_id: str) -> bool:
        return self.kind != "stream_token" or self.generation_id == generation_id

    def may_read_session(self, session_id: str) -> bool:
        return self.kind != "stream_token" or self.session_id == session_id


class Authenticator:
    def __init__(self, settings: Settings) -> None:
        self.disabled = settings.auth_disabled
        self.ttl_s = settings.stream_token_ttl_s
        self._serializer = URLSafeTimedSerializer(settings.signing_key, salt=_SALT)
        # ``name:key`` names a key for logs, metrics and limits; a bare key gets a stable name derived from
        # a hash of it (never the key itself).
        self._keys: list[tuple[str, bytes]] = []
        for entry in sorted(settings.api_key_set):
            name, sep, key = entry.partition(":")
            if not sep:
                name, key = f"key-{hashlib.sha256(entry.encode()).hexdigest()[:10]}", entry
            self._keys.append((name, key.encode()))

    def stream_token(self, *, generation_id: str | None = None, session_id: str | None = None) -> str:
        payload = {"g": generation_id} if generation_id else {"s": session_id}
        return str(self._serializer.dumps(payload))

    def authenticate(self, authorization: str | None, token: str | None) -> Principal:
        """Identify the caller from the Authorization header or a stream token; raises ApiError 401."""
        if authorization:
            scheme, _, credential = authorization.partition(" ")
            if scheme.lower() != "bearer" or not credential.strip():
                raise ApiError(401, "invalid_credentials", "Use 'Authorization: Bearer <api key>'.")
            name = self._match_key(credential.strip())
            if name is not None:
                return Principal("api_key", name=name)
            if not self.disabled:
                raise ApiError(401, "invalid_credentials", "The API key is not valid.")
        if token:
            return self._verify(token)
        if self.disabled:
            return Principal("anonymous", name="anonymous")
        raise ApiError(401, "missing_credentials", "Send 'Authorization: Bearer <api key>' or ?token=<stream token>.")

    def key_name(self, authorization: str | None) -> str | None:
        """The name of the API key in an Authorization header, or None (for rate limiting: no errors)."""
        if not authorization:
            return None
        scheme, _, credential = authorization.partition(" ")
        return self._match_key(credential.strip()) if scheme.lower() == "bearer" else None

    def _match_key(self, credential: str) -> str | None:
        given = credential.encode()
        found: str | None = None
        # Compare against every key in constant time, so timing reveals neither a key nor its position.
        for name, key in self._keys:
            if hmac.compare_digest(given, key):
                found = name
        return found

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
            "stream_token", name="stream_token", generation_id=payload.get("g"), session_id=payload.get("s")
        )

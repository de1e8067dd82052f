"""The audit trail: one log record per security-relevant action, on the logger ``tokenbridge.audit``.

Each record says who (``actor``: the key's name, never the key), what (``action``), on what (``generation_id``,
``session_id``, ``dead_letter_id``, and ``owner`` when it is another owner's), with what ``outcome`` (``ok`` or the
error code), and the ``request_id`` the answer carried in ``X-Request-ID``. The actions:

- ``auth.refused``: credentials refused (401); ``credential`` is ``sha256:`` and the first 10 hex digits of the
  SHA-256 of the key sent, or ``stream_token``;
- ``access.refused``: an action refused (403): outside the key's scope, a stream token outside its generation or
  session, a WebSocket from a foreign origin;
- ``admin.<action>`` (``admin.read``, ``admin.cancel``, ``admin.feed``): an ``admin`` key on another owner's
  generation or session (a token it mints for one is a ``token.mint`` record with that ``owner``);
- ``token.mint``: a stream token minted (``POST …/token``);
- ``dead_letter.list``, ``dead_letter.replay``, ``dead_letter.drop``;
- ``keys.reload``: the keys file read again, with the names ``added``, ``removed`` and ``changed`` (or ``outcome``
  ``invalid`` and the ``error``: positions, names and fields, never a value).

Records are kept whatever ``LOG_LEVEL`` is.
"""

from __future__ import annotations

import hashlib
import logging
import re
import secrets
from typing import TYPE_CHECKING, Any

from flask import Response, g, request

if TYPE_CHECKING:
    from app.auth import Principal

logger = logging.getLogger("tokenbridge.audit")
logger.setLevel(logging.INFO)  # an audit trail does not depend on how chatty the other logs are

REQUEST_ID_HEADER = "X-Request-ID"
# A request id given by a proxy in front (nginx's $request_id) is kept; anything else is replaced by one of ours.
_GIVEN_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")

# Routes recorded whoever calls them.
ROUTE_ACTIONS = {
    "api.generation_token": "token.mint",
    "api.session_token": "token.mint",
    "dead_letters.list_dead_letters": "dead_letter.list",
    "dead_letters.replay_dead_letter": "dead_letter.replay",
    "dead_letters.drop_dead_letter": "dead_letter.drop",
}
_SUBJECTS = ("generation_id", "session_id", "dead_letter_id")


def record(action: str, outcome: str, **fields: Any) -> None:
    """One audit record (fields that are None are left out)."""
    present = {name: value for name, value in fields.items() if value is not None}
    who = present.get("actor") or present.get("credential") or "nobody"
    subject = next((present[name] for name in _SUBJECTS if name in present), None)
    on = f" on {subject}" if subject else ""
    logger.info("%s by %s%s: %s", action, who, on, outcome, extra={"action": action, "outcome": outcome, **present})


def actor(principal: Principal) -> dict[str, Any]:
    """Who a caller is, for a record: a key's name, owner and scope, or the kind of caller."""
    if principal.kind == "api_key":
        return {"actor": principal.name, "actor_owner": principal.owner, "scope": principal.scope}
    return {"actor": principal.kind}


def request_fields() -> dict[str, Any]:
    """The caller and the request (its path without the query string, which may hold a stream token)."""
    principal = g.get("principal")
    view_args = request.view_args or {}
    fields: dict[str, Any] = {
        "request_id": g.get("request_id"),
        "client": request.remote_addr,
        "method": request.method,
        "path": request.path,
        **{name: view_args.get(name) for name in _SUBJECTS},
        **g.get("audit_fields", {}),
    }
    return {**fields, **actor(principal)} if principal is not None else fields


def note(**fields: Any) -> None:
    """Fields for this request's record, should it have one (the generation of a dead letter, another owner)."""
    g.audit_fields = {**g.get("audit_fields", {}), **fields}


def note_owner(owner: str, action: str) -> None:
    """A resource of ``owner`` was reached for ``action``: recorded when an admin key reaches another owner's."""
    principal = g.get("principal")
    admin = principal is not None and principal.kind == "api_key" and principal.scope == "admin"
    if admin and owner != principal.owner:
        note(owner=owner)
        g.audit_admin_action = f"admin.{action}"


def crossing() -> bool:
    """Whether this request is an admin key's on another owner's generation or session."""
    return "audit_admin_action" in g


def assign_request_id() -> None:
    given = request.headers.get(REQUEST_ID_HEADER, "")
    g.request_id = given if _GIVEN_REQUEST_ID.match(given) else f"req_{secrets.token_hex(8)}"


def record_request(response: Response) -> Response:
    """Answer with the request id, and record the request when it is an audited one."""
    if "request_id" in g:
        response.headers[REQUEST_ID_HEADER] = g.request_id
    action = _action_of(response.status_code)
    if action is not None:
        outcome = "ok" if response.status_code < 400 else _error_code(response)
        fields = request_fields()
        if response.status_code == 401:
            fields["credential"] = _credential()
        record(action, outcome, status=response.status_code, **fields)
    return response


def _action_of(status: int) -> str | None:
    if status == 401:
        return "auth.refused"
    if status == 403:
        return "access.refused"
    action: str | None = ROUTE_ACTIONS.get(request.endpoint or "") or g.get("audit_admin_action")
    return action


def _error_code(response: Response) -> str:
    body = response.get_json(silent=True) if response.is_json and not response.is_streamed else None
    error = body.get("error") if isinstance(body, dict) else None
    code = error.get("code") if isinstance(error, dict) else None
    return code if isinstance(code, str) else str(response.status_code)


def _credential() -> str | None:
    """What was sent, never the secret: the SHA-256 prefix of a key, or that it was a stream token."""
    scheme, _, value = request.headers.get("Authorization", "").strip().partition(" ")
    sent = value.strip() or scheme  # a header without a scheme is all key
    if sent:
        return f"sha256:{hashlib.sha256(sent.encode()).hexdigest()[:10]}"
    return "stream_token" if request.args.get("token") else None

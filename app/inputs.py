"""Reading a request: credentials, JSON body, ids, cursor, and validation details (shared by every /v1 route)."""

from __future__ import annotations

import re
from typing import Any

import orjson
from flask import g, request
from pydantic import ValidationError

from app import audit
from app.auth import Action
from app.errors import ApiError, invalid
from app.services import services
from bridge import streams
from bridge.content import is_union_tag
from bridge.generation import ID_PATTERN
from bridge.models import parse_options
from bridge.streams import parse_stream_id

_ID = re.compile(ID_PATTERN)


# What each route does, for the scope check. A route missing here is only for keys that may do everything
# (a test keeps every /v1 route listed).
ROUTE_ACTIONS: dict[str, Action] = {
    "api.create_generation": Action.CREATE,
    "api.get_generation": Action.READ,
    "api.cancel_generation": Action.CANCEL,
    "sse.generation_events": Action.READ,
    "websocket.generation_ws": Action.READ,
    "api.generation_token": Action.MINT,
    "sse.session_events": Action.READ,
    "durable_streams.generation_stream": Action.READ,
    "durable_streams.session_stream": Action.READ,
    "durable_store.read_stream": Action.READ,
    "durable_store.write_stream": Action.FEED,
    "durable_store.delete_stream": Action.FEED,
    "durable_external.append_generation": Action.FEED,
    "api.session_generations": Action.READ,
    "api.session_token": Action.MINT,
    "producers.append": Action.FEED,
    "producers.complete": Action.FEED,
    "openai.chat_completions": Action.CREATE,
    "models.list_models": Action.ACCOUNT,
    "models.get_model": Action.ACCOUNT,
    "stats.stats": Action.ACCOUNT,
    "dead_letters.list_dead_letters": Action.ADMIN,
    "dead_letters.replay_dead_letter": Action.ADMIN,
    "dead_letters.drop_dead_letter": Action.ADMIN,
    "pages.dashboard_data": Action.ACCOUNT,
}


def authenticate() -> None:
    """Identify the caller (``g.principal``) and check its scope; raises ApiError 401 or 403.

    CORS preflights carry no credentials.
    """
    if request.method == "OPTIONS":
        return
    g.principal = principal = services().auth.authenticate(
        request.headers.get("Authorization"), request.args.get("token")
    )
    action = _route_action()
    if principal.may(action):
        refuse_body()
        return
    if principal.kind == "stream_token" and principal.read_only and action is Action.CANCEL:
        raise ApiError(
            403, "forbidden", "A refreshed stream token only reads: cancel with the generation's first token or a key."
        )
    if principal.kind == "stream_token":
        raise ApiError(
            403, "forbidden", "This needs an API key: a stream token may only read (or cancel) its generation."
        )
    raise ApiError(
        403, "insufficient_scope", f"This API key (scope {principal.scope!r}) may not {_ACTION_WORDS[action]}."
    )


def _route_action() -> Action:
    return ROUTE_ACTIONS.get(request.endpoint or "", Action.ADMIN)


_ACTION_WORDS = {
    Action.CREATE: "create generations",
    Action.READ: "read generations or sessions",
    Action.CANCEL: "cancel generations",
    Action.FEED: "feed external generations",
    Action.MINT: "mint stream tokens",
    Action.ACCOUNT: "read models, statistics or the dashboard",
    Action.ADMIN: "use administration routes",
}


def owner_of(meta: dict[str, str]) -> str:
    """The owner of a generation (generations created before owners were recorded: the key's name)."""
    return meta.get("owner") or meta.get("api_key") or ""


def json_body() -> dict[str, Any]:
    if request.mimetype != "application/json":
        raise ApiError(415, "unsupported_media_type", "Send the body as JSON with 'Content-Type: application/json'.")
    raw = request.get_data(cache=False)
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, "malformed_json", f"The body is not valid JSON: {exc}.") from None
    if not isinstance(body, dict):
        raise ApiError(422, "validation_failed", "The body must be a JSON object.", details=[])
    return body


# The routes that read a JSON body (with json_body); every other route takes none (refuse_body).
BODY_ENDPOINTS = frozenset(
    {
        "api.create_generation",
        "producers.append",
        "producers.complete",
        "openai.chat_completions",
        "durable_store.write_stream",
        "durable_external.append_generation",
    }
)


def refuse_body() -> None:
    """A route that takes no body gets none, or ``{}``: a body goes through json_body's rules (413, 415, 400), and
    any field in it is a 422, as an unknown field is on the routes that take one."""
    if request.endpoint in BODY_ENDPOINTS:
        return
    chunked = "chunked" in request.headers.get("Transfer-Encoding", "").lower()
    if not request.content_length and not (chunked and request.get_data(cache=True)):
        return
    fields = json_body()
    if fields:
        raise invalid(
            [{"field": name, "message": "This route takes no body.", "type": "extra_forbidden"} for name in fields]
        )


def validation_details(exc: ValidationError, prefix: tuple[str | int, ...] = ()) -> list[dict[str, Any]]:
    # The tags of unions (``<parts>``, ``<image_url>``) are no fields of the request: left out of its name.
    return [
        {
            "field": ".".join(str(part) for part in (*prefix, *error["loc"]) if not is_union_tag(part)) or "body",
            "message": error["msg"],
            "type": error["type"],
        }
        for error in exc.errors(include_url=False)
    ]


def checked_id(value: str, what: str) -> str:
    if not _ID.match(value):
        raise ApiError(404, "not_found", f"No {what} with id {value!r}.")
    return value


def read_cursor() -> str:
    value = request.headers.get("Last-Event-ID") or request.args.get("last_event_id") or "0"
    value = value.strip()
    if value != "0" and parse_stream_id(value) is None:
        raise ApiError(400, "invalid_last_event_id", "Last-Event-ID must be an event id received from this stream.")
    return value


def load_meta(generation_id: str) -> dict[str, str]:
    checked_id(generation_id, "generation")
    if not g.principal.may_read_generation(generation_id):
        raise ApiError(403, "forbidden", "This stream token is for another generation.")
    meta = streams.load_meta(services().redis, generation_id)
    if not meta or not g.principal.owns(owner_of(meta)):
        # Another owner's generation is answered exactly like one that does not exist.
        raise ApiError(404, "not_found", f"No generation with id {generation_id!r}.")
    audit.note_owner(owner_of(meta), _route_action())
    return meta


def check_session(session_id: str) -> None:
    """The session exists and the caller may read it; raises ApiError 403 (token of another) or 404."""
    checked_id(session_id, "session")
    if not g.principal.may_read_session(session_id):
        raise ApiError(403, "forbidden", "This stream token is for another session.")
    owner = streams.session_owner(services().redis, session_id)
    if owner is None or not g.principal.owns(owner):
        raise ApiError(404, "not_found", f"No session with id {session_id!r}.")
    audit.note_owner(owner, _route_action())


def model_errors(model: Any, options: Any, max_tokens: Any) -> list[dict[str, Any]]:
    """Unknown model, options the model does not accept, or more tokens than it (or the server) allows."""
    if not isinstance(model, str) or not model:
        return []  # reported by the request model
    s = services()
    spec = s.models.get(model)
    if spec is None:
        available = sorted(s.models)
        return [
            {
                "field": "model",
                "message": f"Unknown model {model!r}; available: {', '.join(available)}.",
                "type": "unknown_model",
                "available": available,
            }
        ]
    errors: list[dict[str, Any]] = []
    if options is None or isinstance(options, dict):  # otherwise reported by the request model
        try:
            parse_options(spec, options)
        except ValidationError as exc:
            errors.extend(validation_details(exc, ("options",)))
    ceiling = min(spec.max_tokens or s.settings.max_tokens_limit, s.settings.max_tokens_limit)
    if isinstance(max_tokens, int) and max_tokens > ceiling:
        errors.append(
            {"field": "max_tokens", "message": f"max_tokens may be at most {ceiling}.", "type": "less_than_equal"}
        )
    return errors


def limit_arg(*, default: int, most: int) -> int:
    """``?limit=``: a whole number from 1 to ``most`` (``default`` when absent); 422 otherwise."""
    raw = request.args.get("limit")
    if raw is None:
        return default
    if not raw.isdigit() or not 1 <= int(raw) <= most:
        raise ApiError(
            422,
            "validation_failed",
            f"limit must be a whole number from 1 to {most}.",
            details=[{"field": "limit", "message": f"between 1 and {most}", "type": "query"}],
        )
    return int(raw)

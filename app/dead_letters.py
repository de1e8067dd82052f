"""``/v1/dead-letters`` (admin scope): list, replay and drop the entries the processor chain gave up on."""

from __future__ import annotations

from flask import Blueprint, Response, request

from app import audit
from app.errors import ApiError
from app.inputs import authenticate, limit_arg
from app.responses import json_response
from app.schemas import DeadLetterDropped, DeadLetterList, DeadLetterView, ReplayAccepted
from app.services import services
from bridge import dead_letters
from bridge.dead_letters import DeadLetter, Decision
from bridge.streams import parse_stream_id

bp = Blueprint("dead_letters", __name__, url_prefix="/v1")
bp.before_request(authenticate)


def _letter(dead_letter_id: str) -> DeadLetter:
    letter = dead_letters.get_dead_letter(services().redis, dead_letter_id) if parse_stream_id(dead_letter_id) else None
    if letter is None:
        raise ApiError(404, "not_found", f"No dead letter with id {dead_letter_id!r}.")
    audit.note(generation_id=letter.generation_id, owner=letter.owner or None)
    return letter


def _decision_ttl_ms() -> int:
    # The consumer reads the decision at its next heartbeat; keep it for as long as a hold may last, at least.
    settings = services().settings
    return int(max(settings.dead_letter_hold_s, 60) * 2 * 1000)


@bp.get("/dead-letters")
def list_dead_letters() -> Response:
    before = request.args.get("before")
    if before is not None and parse_stream_id(before) is None:
        raise ApiError(400, "invalid_cursor", "before must be the id of a dead letter.")
    limit = limit_arg(default=50, most=500)
    letters, total = dead_letters.list_dead_letters(services().redis, limit=limit, before=before)
    return json_response(DeadLetterList(data=[DeadLetterView(**letter.public()) for letter in letters], total=total))


@bp.post("/dead-letters/<dead_letter_id>/replay")
def replay_dead_letter(dead_letter_id: str) -> Response:
    letter = _letter(dead_letter_id)
    if not letter.held:
        raise ApiError(
            409,
            "generation_finished",
            "Its generation has ended: nothing can follow its terminal event. Drop the dead letter instead.",
        )
    dead_letters.decide(services().redis, letter, Decision.REPLAY, ttl_ms=_decision_ttl_ms())
    return json_response(ReplayAccepted(id=letter.id, generation_id=letter.generation_id, status="replaying"), 202)


@bp.delete("/dead-letters/<dead_letter_id>")
def drop_dead_letter(dead_letter_id: str) -> Response:
    letter = _letter(dead_letter_id)
    dead_letters.decide(services().redis, letter, Decision.DROP, ttl_ms=_decision_ttl_ms())
    # A held generation now ends with poison_entry; a finished one stays as it was.
    dropped = DeadLetterDropped(id=letter.id, generation_id=letter.generation_id, dropped=True, ended=letter.held)
    return json_response(dropped)

"""External producers over HTTP: ``POST /v1/generations/{id}/tokens`` and ``/complete``."""

from __future__ import annotations

from typing import Annotated, Any

from flask import Blueprint, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from app.errors import ApiError, invalid
from app.inputs import authenticate, json_body, load_meta, validation_details
from app.responses import json_response
from app.schemas import CompleteAccepted, TokensAccepted
from app.services import services
from bridge.external import append_tokens, finish
from bridge.scripts import Status

bp = Blueprint("producers", __name__, url_prefix="/v1")
bp.before_request(authenticate)

MAX_BATCH = 1000
MAX_TOKEN_CHARS = 100_000


class TokenBatch(BaseModel):
    model_config = ConfigDict(extra="forbid")
    index: int = Field(ge=0, description="position of the batch's first token in the generation")
    tokens: list[Annotated[str, Field(max_length=MAX_TOKEN_CHARS)]] = Field(min_length=1, max_length=MAX_BATCH)


class ErrorBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    code: str = Field(pattern=r"^[a-z][a-z0-9_]{0,63}$")
    message: str = Field(max_length=2000)


class Completion(BaseModel):
    model_config = ConfigDict(extra="forbid")
    finish_reason: str | None = Field(default=None, pattern=r"^[a-z][a-z0-9_]{0,63}$")
    error: ErrorBody | None = None
    usage: dict[str, Annotated[int, Field(ge=0)]] | None = None

    @model_validator(mode="after")
    def _one_outcome(self) -> Completion:
        if self.finish_reason is not None and self.error is not None:
            raise ValueError("give finish_reason or error, not both")
        return self


def _external(generation_id: str) -> None:
    meta = load_meta(generation_id)
    if meta.get("model") != "external":
        raise ApiError(409, "not_external", "Only generations created with model 'external' take tokens over HTTP.")


def _parse(model: type[BaseModel], body: dict[str, Any]) -> Any:
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        raise invalid(validation_details(exc)) from None


@bp.post("/generations/<generation_id>/tokens")
def append(generation_id: str) -> Response:
    _external(generation_id)
    batch: TokenBatch = _parse(TokenBatch, json_body())
    s = services()
    result = append_tokens(s.redis, generation_id, batch.index, batch.tokens, settings=s.settings)
    if result.status is Status.GAP:
        raise ApiError(
            409,
            "index_gap",
            f"This batch starts at {batch.index}, but the next token expected is {result.next_index}.",
            details={"expected_index": result.next_index},
        )
    if result.status is Status.FINISHED:
        raise ApiError(409, "already_finished", "The generation has already finished.")
    if result.status is Status.UNKNOWN:
        raise ApiError(404, "not_found", f"No generation with id {generation_id!r}.")
    if result.status is Status.NOT_EXTERNAL:
        raise ApiError(409, "not_external", "Only generations created with model 'external' take tokens over HTTP.")
    duplicate = result.status is Status.DUPLICATE
    return json_response(TokensAccepted(id=generation_id, next_index=result.next_index, duplicate=duplicate), 202)


@bp.post("/generations/<generation_id>/complete")
def complete(generation_id: str) -> Response:
    _external(generation_id)
    completion: Completion = _parse(Completion, json_body())
    s = services()
    result = finish(
        s.redis,
        generation_id,
        settings=s.settings,
        finish_reason=completion.finish_reason,
        error=completion.error.model_dump() if completion.error else None,
        usage=completion.usage,
    )
    if result is Status.FINISHED:
        raise ApiError(409, "already_finished", "The generation has already finished.")
    if result is Status.UNKNOWN:
        raise ApiError(404, "not_found", f"No generation with id {generation_id!r}.")
    return json_response(CompleteAccepted(id=generation_id, status="completing"), 202)

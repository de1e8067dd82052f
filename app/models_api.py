"""``GET /v1/models`` and ``GET /v1/models/{id}``: the model registry as OpenAI model objects.

OpenAI client libraries list and look up the models a request may name (``client.models.list()``). Each object
has OpenAI's fields; tokenbridge's own ride in a ``tokenbridge`` object, which those libraries ignore.
"""

from __future__ import annotations

import os

from flask import Blueprint, Response

from app.errors import ApiError
from app.inputs import authenticate
from app.responses import json_response
from app.schemas import ModelInfo, ModelList, ModelObject
from app.services import services
from bridge.models import BUILTIN, ModelSpec
from bridge.settings import Settings

bp = Blueprint("models", __name__, url_prefix="/v1")
bp.before_request(authenticate)

# ``created`` of the built-in models (2026-11-21, when they first shipped): the same on every web process.
BUILTIN_CREATED = 1_795_219_200


def _created(settings: Settings) -> int:
    """When the configured models were configured: the models file's modification time, in UNIX seconds."""
    if not settings.models_file:
        return BUILTIN_CREATED
    try:
        return int(os.stat(settings.models_file).st_mtime)
    except OSError:
        return BUILTIN_CREATED


def _model_object(spec: ModelSpec, settings: Settings, configured_at: int) -> ModelObject:
    builtin = spec.name in BUILTIN
    ceiling = min(spec.max_tokens or settings.max_tokens_limit, settings.max_tokens_limit)
    return ModelObject(
        id=spec.name,
        object="model",
        created=BUILTIN_CREATED if builtin else configured_at,
        owned_by="tokenbridge" if builtin else spec.provider,
        tokenbridge=ModelInfo(provider=spec.provider, max_tokens=ceiling),
    )


@bp.get("/models")
def list_models() -> Response:
    s = services()
    configured_at = _created(s.settings)
    data = [_model_object(spec, s.settings, configured_at) for spec in s.models.values()]
    return json_response(ModelList(object="list", data=data))


@bp.get("/models/<path:model_id>")
def get_model(model_id: str) -> Response:
    s = services()
    spec = s.models.get(model_id)
    if spec is None:
        raise ApiError(404, "model_not_found", f"The model {model_id!r} does not exist.")
    return json_response(_model_object(spec, s.settings, _created(s.settings)))

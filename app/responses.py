"""The one place a pydantic model becomes a JSON body (``app/schemas.py`` has the models)."""

from __future__ import annotations

from collections.abc import Mapping

from flask import Response, jsonify
from pydantic import BaseModel


def json_response(model: BaseModel, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
    """``model`` as a JSON response, written by the app's JSON provider as ``jsonify`` writes a dict.

    Every field is written, null included, in the model's order; a field declared with ``exclude_if`` is left out
    when its condition holds (as where a body has no such key).
    """
    response = jsonify(model.model_dump(mode="json"))
    response.status_code = status
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response

"""``GET /openapi.json``: the OpenAPI 3.1 description of every ``/v1`` route.

Request bodies come from the same pydantic models that validate them, so the document cannot drift from
what the server accepts.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, jsonify

from app.producers import Completion, TokenBatch
from bridge.generation import GenerationRequest

bp = Blueprint("openapi", __name__)

_ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message"],
            "properties": {"code": {"type": "string"}, "message": {"type": "string"}, "details": {}},
        }
    },
}
_SSE = {"text/event-stream": {"schema": {"type": "string"}}}
_ID = {"type": "string", "pattern": r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$"}
_GENERATION_ID = {"name": "generation_id", "in": "path", "required": True, "schema": _ID}


def _errors(*statuses: int) -> dict[str, Any]:
    common = (400, 401, 403, 404, 413, 415, 422, 429, 503)
    return {
        str(status): {"description": "Error", "content": {"application/json": {"schema": _ERROR}}}
        for status in sorted(set(statuses) | set(common))
    }


# The OpenAI-compatible routes answer errors in OpenAI's shape (app/errors.py).
_OPENAI_ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type", "param", "code"],
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": {"type": ["string", "null"]},
                "code": {"type": ["string", "null"]},
                "details": {},
            },
        }
    },
}
_MODEL = {
    "type": "object",
    "required": ["id", "object", "created", "owned_by"],
    "properties": {
        "id": {"type": "string"},
        "object": {"const": "model"},
        "created": {"type": "integer"},
        "owned_by": {"type": "string"},
        "tokenbridge": {
            "type": "object",
            "properties": {"provider": {"type": "string"}, "max_tokens": {"type": "integer"}},
        },
    },
}


def _openai_errors(*statuses: int) -> dict[str, Any]:
    errors = _errors(*statuses)
    for response in errors.values():
        response["content"] = {"application/json": {"schema": _OPENAI_ERROR}}
    return errors


def _json(schema: dict[str, Any], description: str = "OK") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


_COMPONENTS: dict[str, Any] = {}


def _body(model: type[Any]) -> dict[str, Any]:
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    _COMPONENTS.update(schema.pop("$defs", {}))
    return {"required": True, "content": {"application/json": {"schema": schema}}}


_CREATED = {
    "type": "object",
    "required": ["id", "session_id", "status", "model", "events_url", "ws_url", "stream_token"],
    "properties": {
        "id": {"type": "string"},
        "session_id": {"type": "string"},
        "status": {"type": "string"},
        "model": {"type": "string"},
        "events_url": {"type": "string"},
        "ws_url": {"type": "string"},
        "stream_token": {"type": "string"},
        "session_events_url": {"type": "string"},
        "session_stream_token": {"type": "string"},
    },
}
_GENERATION = {
    "type": "object",
    "required": ["id", "session_id", "model", "status", "created_at", "usage", "text", "error"],
    "properties": {
        "id": {"type": "string"},
        "session_id": {"type": "string"},
        "model": {"type": "string"},
        "status": {"enum": ["queued", "running", "completed", "failed", "cancelled"]},
        "created_at": {"type": "number"},
        "started_at": {"type": ["number", "null"]},
        "finished_at": {"type": ["number", "null"]},
        "finish_reason": {"type": ["string", "null"]},
        "usage": {"type": "object"},
        "text": {"type": "string"},
        "error": {"type": ["object", "null"]},
        "readers": {"type": "integer", "minimum": 0, "description": "live readers across every web process"},
    },
}
_DEAD_LETTER_ID = {"name": "dead_letter_id", "in": "path", "required": True, "schema": {"type": "string"}}
_DEAD_LETTER = {
    "type": "object",
    "required": ["id", "at", "generation_id", "entry_id", "error", "held"],
    "properties": {
        "id": {"type": "string"},
        "at": {"type": "number"},
        "generation_id": {"type": "string"},
        "entry_id": {"type": "string"},
        "error": {"type": "string"},
        "deliveries": {"type": ["integer", "null"]},
        "consumer": {"type": "string"},
        "held": {"type": "boolean", "description": "its generation waits for a replay or a drop"},
        "fields": {},
    },
}
_SESSION_ID = {"name": "session_id", "in": "path", "required": True, "schema": _ID}
_TOKEN = {
    "type": "object",
    "required": ["stream_token", "expires_at"],
    "properties": {"stream_token": {"type": "string"}, "expires_at": {"type": "integer"}},
}
_LIMIT = {
    "name": "limit",
    "in": "query",
    "required": False,
    "schema": {"type": "integer", "minimum": 1, "maximum": 100},
}


def document() -> dict[str, Any]:
    paths = _paths()
    return {
        "openapi": "3.1.0",
        "info": {"title": "tokenbridge", "version": "1"},
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": dict(_COMPONENTS),
        },
        "security": [{"bearer": []}],
        "paths": paths,
    }


def _paths() -> dict[str, Any]:
    return {
        "/v1/generations": {
            "post": {
                "summary": "Submit a generation",
                "requestBody": _body(GenerationRequest),
                "responses": {"202": _json(_CREATED, "Accepted"), **_errors(409)},
            }
        },
        "/v1/generations/{generation_id}": {
            "get": {
                "summary": "A generation's state and text so far",
                "parameters": [_GENERATION_ID],
                "responses": {"200": _json(_GENERATION), **_errors()},
            }
        },
        "/v1/generations/{generation_id}/cancel": {
            "post": {
                "summary": "Cancel a generation",
                "parameters": [_GENERATION_ID],
                "responses": {"202": _json({"type": "object"}, "Accepted"), **_errors(409)},
            }
        },
        "/v1/generations/{generation_id}/events": {
            "get": {
                "summary": "Server-Sent Events of a generation (resume with Last-Event-ID)",
                "parameters": [
                    _GENERATION_ID,
                    {"name": "Last-Event-ID", "in": "header", "required": False, "schema": {"type": "string"}},
                    {"name": "token", "in": "query", "required": False, "schema": {"type": "string"}},
                ],
                "responses": {
                    "200": {"description": "Event stream", "content": _SSE},
                    "204": {"description": "Already ended"},
                    **_errors(),
                },
            }
        },
        "/v1/generations/{generation_id}/ws": {
            "get": {
                "summary": "WebSocket of a generation (same events as JSON frames)",
                "parameters": [_GENERATION_ID],
                "responses": {"101": {"description": "Switching protocols"}, **_errors()},
            }
        },
        "/v1/generations/{generation_id}/tokens": {
            "post": {
                "summary": "Append a batch of an external producer's tokens",
                "parameters": [_GENERATION_ID],
                "requestBody": _body(TokenBatch),
                "responses": {"202": _json({"type": "object"}, "Accepted"), **_errors(409)},
            }
        },
        "/v1/generations/{generation_id}/complete": {
            "post": {
                "summary": "End an external generation",
                "parameters": [_GENERATION_ID],
                "requestBody": _body(Completion),
                "responses": {"202": _json({"type": "object"}, "Accepted"), **_errors(409)},
            }
        },
        "/v1/generations/{generation_id}/token": {
            "post": {
                "summary": "A fresh stream token for a generation",
                "parameters": [_GENERATION_ID],
                "responses": {"200": _json(_TOKEN), **_errors()},
            }
        },
        "/v1/sessions/{session_id}/events": {
            "get": {
                "summary": "Server-Sent Events of every generation in a session",
                "parameters": [_SESSION_ID],
                "responses": {"200": {"description": "Event stream", "content": _SSE}, **_errors()},
            }
        },
        "/v1/sessions/{session_id}/generations": {
            "get": {
                "summary": "The generations of a session, newest first",
                "parameters": [_SESSION_ID, _LIMIT],
                "responses": {
                    "200": _json(
                        {
                            "type": "object",
                            "required": ["data", "has_more"],
                            "properties": {
                                "data": {"type": "array", "items": _GENERATION},
                                "has_more": {"type": "boolean"},
                            },
                        }
                    ),
                    **_errors(),
                },
            }
        },
        "/v1/sessions/{session_id}/token": {
            "post": {
                "summary": "A fresh stream token for a session",
                "parameters": [_SESSION_ID],
                "responses": {"200": _json(_TOKEN), **_errors()},
            }
        },
        "/v1/chat/completions": {
            "post": {
                "summary": "OpenAI Chat Completions, backed by a generation",
                "requestBody": {"required": True, "content": {"application/json": {"schema": {"type": "object"}}}},
                "responses": {
                    "200": {
                        "description": "Completion or stream",
                        "content": {"application/json": {"schema": {"type": "object"}}, **_SSE},
                    },
                    **_openai_errors(502, 504),
                },
            }
        },
        "/v1/models": {
            "get": {
                "summary": "The models a request may name, in OpenAI's list shape",
                "responses": {
                    "200": _json(
                        {
                            "type": "object",
                            "required": ["object", "data"],
                            "properties": {"object": {"const": "list"}, "data": {"type": "array", "items": _MODEL}},
                        }
                    ),
                    **_openai_errors(),
                },
            }
        },
        "/v1/models/{model_id}": {
            "get": {
                "summary": "One model, as an OpenAI model object",
                "parameters": [{"name": "model_id", "in": "path", "required": True, "schema": {"type": "string"}}],
                "responses": {"200": _json(_MODEL), **_openai_errors()},
            }
        },
        "/v1/dead-letters": {
            "get": {
                "summary": "Dead letters, newest first (admin scope)",
                "parameters": [
                    {
                        "name": "limit",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "integer", "minimum": 1, "maximum": 500},
                    },
                    {"name": "before", "in": "query", "required": False, "schema": {"type": "string"}},
                ],
                "responses": {
                    "200": _json(
                        {
                            "type": "object",
                            "required": ["data", "total"],
                            "properties": {
                                "data": {"type": "array", "items": _DEAD_LETTER},
                                "total": {"type": "integer"},
                            },
                        }
                    ),
                    **_errors(),
                },
            }
        },
        "/v1/dead-letters/{dead_letter_id}/replay": {
            "post": {
                "summary": "Try a held generation's dead entry again (admin scope)",
                "parameters": [_DEAD_LETTER_ID],
                "responses": {"202": _json({"type": "object"}, "Accepted"), **_errors(409)},
            }
        },
        "/v1/dead-letters/{dead_letter_id}": {
            "delete": {
                "summary": "Drop a dead letter; a held generation ends with poison_entry (admin scope)",
                "parameters": [_DEAD_LETTER_ID],
                "responses": {"200": _json({"type": "object"}), **_errors()},
            }
        },
        "/v1/stats": {
            "get": {"summary": "Per-model statistics", "responses": {"200": _json({"type": "object"}), **_errors()}}
        },
    }


@bp.get("/openapi.json")
def openapi() -> Response:
    return jsonify(document())

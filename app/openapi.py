"""``GET /openapi.json``: the OpenAPI 3.1 description of every ``/v1`` route.

Every body schema comes from a pydantic model: a request's from the model that validates it, a response's from
its model in ``app/schemas.py``; all of them (and the models they use) are components, referred to by name.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from flask import Blueprint, Response, jsonify
from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from app import schemas
from app.producers import Completion, TokenBatch
from bridge.generation import ID_PATTERN, GenerationRequest

bp = Blueprint("openapi", __name__)

_REF = "#/components/schemas/{model}"

_REQUESTS: tuple[type[BaseModel], ...] = (GenerationRequest, TokenBatch, Completion)
_RESPONSES: tuple[type[BaseModel], ...] = (
    schemas.ErrorResponse,
    schemas.OpenAIErrorResponse,
    schemas.GenerationCreated,
    schemas.Generation,
    schemas.SessionGenerations,
    schemas.StreamToken,
    schemas.CancelAccepted,
    schemas.TokensAccepted,
    schemas.CompleteAccepted,
    schemas.ModelObject,
    schemas.ModelList,
    schemas.DeadLetterList,
    schemas.ReplayAccepted,
    schemas.DeadLetterDropped,
    schemas.Stats,
    schemas.ChatCompletion,
)


@cache
def _schemas() -> tuple[dict[Any, dict[str, Any]], dict[str, Any]]:
    """Each model's reference, and every component, from one generation (so that names never clash)."""
    models: list[tuple[type[BaseModel], JsonSchemaMode]] = [(model, "validation") for model in _REQUESTS]
    models += [(model, "serialization") for model in _RESPONSES]
    refs, definitions = models_json_schema(models, ref_template=_REF)
    return refs, definitions.get("$defs", {})


def _ref(model: type[BaseModel], mode: JsonSchemaMode = "serialization") -> dict[str, Any]:
    return dict(_schemas()[0][(model, mode)])


def _body(model: type[BaseModel]) -> dict[str, Any]:
    return {"required": True, "content": {"application/json": {"schema": _ref(model, "validation")}}}


def _json(model: type[BaseModel], description: str = "OK") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ref(model)}}}


_COMMON_ERRORS = (400, 401, 403, 404, 413, 415, 422, 429, 503)


def _errors(*statuses: int, model: type[BaseModel] = schemas.ErrorResponse) -> dict[str, Any]:
    return {str(status): _json(model, "Error") for status in sorted(set(statuses) | set(_COMMON_ERRORS))}


def _openai_errors(*statuses: int) -> dict[str, Any]:
    # The OpenAI-compatible routes answer errors in OpenAI's shape (app/errors.py).
    return _errors(*statuses, model=schemas.OpenAIErrorResponse)


_SSE = {"text/event-stream": {"schema": {"type": "string"}}}
_ID = {"type": "string", "pattern": ID_PATTERN}
_GENERATION_ID = {"name": "generation_id", "in": "path", "required": True, "schema": _ID}
_SESSION_ID = {"name": "session_id", "in": "path", "required": True, "schema": _ID}
_DEAD_LETTER_ID = {"name": "dead_letter_id", "in": "path", "required": True, "schema": {"type": "string"}}


def _limit(most: int) -> dict[str, Any]:
    return {
        "name": "limit",
        "in": "query",
        "required": False,
        "schema": {"type": "integer", "minimum": 1, "maximum": most},
    }


def _query(name: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": {"type": "string"}}


def document() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {"title": "tokenbridge", "version": "1"},
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": dict(_schemas()[1]),
        },
        "security": [{"bearer": []}],
        "paths": {
            **_generation_paths(),
            **_producer_paths(),
            **_session_paths(),
            **_durable_stream_paths(),
            **_openai_paths(),
            **_admin_paths(),
        },
    }


def _generation_paths() -> dict[str, Any]:
    return {
        "/v1/generations": {
            "post": {
                "summary": "Submit a generation",
                "requestBody": _body(GenerationRequest),
                "responses": {"202": _json(schemas.GenerationCreated, "Accepted"), **_errors(409)},
            }
        },
        "/v1/generations/{generation_id}": {
            "get": {
                "summary": "A generation's state and text so far",
                "parameters": [_GENERATION_ID],
                "responses": {"200": _json(schemas.Generation), **_errors()},
            }
        },
        "/v1/generations/{generation_id}/cancel": {
            "post": {
                "summary": "Cancel a generation",
                "parameters": [_GENERATION_ID],
                "responses": {"202": _json(schemas.CancelAccepted, "Accepted"), **_errors(409)},
            }
        },
        "/v1/generations/{generation_id}/events": {
            "get": {
                "summary": "Server-Sent Events of a generation (resume with Last-Event-ID)",
                "parameters": [
                    _GENERATION_ID,
                    {"name": "Last-Event-ID", "in": "header", "required": False, "schema": {"type": "string"}},
                    _query("token"),
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
        "/v1/generations/{generation_id}/token": {
            "post": {
                "summary": "A fresh stream token for a generation",
                "parameters": [_GENERATION_ID],
                "responses": {"200": _json(schemas.StreamToken), **_errors()},
            }
        },
    }


def _producer_paths() -> dict[str, Any]:
    return {
        "/v1/generations/{generation_id}/tokens": {
            "post": {
                "summary": "Append a batch of an external producer's tokens",
                "parameters": [_GENERATION_ID],
                "requestBody": _body(TokenBatch),
                "responses": {"202": _json(schemas.TokensAccepted, "Accepted"), **_errors(409)},
            }
        },
        "/v1/generations/{generation_id}/complete": {
            "post": {
                "summary": "End an external generation",
                "parameters": [_GENERATION_ID],
                "requestBody": _body(Completion),
                "responses": {"202": _json(schemas.CompleteAccepted, "Accepted"), **_errors(409)},
            }
        },
    }


def _session_paths() -> dict[str, Any]:
    return {
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
                "parameters": [_SESSION_ID, _limit(100)],
                "responses": {"200": _json(schemas.SessionGenerations), **_errors()},
            }
        },
        "/v1/sessions/{session_id}/token": {
            "post": {
                "summary": "A fresh stream token for a session",
                "parameters": [_SESSION_ID],
                "responses": {"200": _json(schemas.StreamToken), **_errors()},
            }
        },
    }


def _durable_stream_read(summary: str, parameter: dict[str, Any]) -> dict[str, Any]:
    return {
        "get": {
            "summary": summary,
            "description": "The Durable Streams protocol's read path (docs/durable-streams.md): an application/json "
            "stream of the events, read from `offset` (-1, now, or a Stream-Next-Offset), live by long-poll or SSE.",
            "parameters": [parameter, _query("offset"), _query("live"), _query("cursor"), _query("token")],
            "responses": {
                "200": {
                    "description": "The events after the offset, as a JSON array (or an SSE stream with live=sse)",
                    "content": {"application/json": {"schema": {"type": "array"}}, **_SSE},
                },
                "204": {"description": "Long-poll: nothing new within the timeout, or the stream is closed"},
                "304": {"description": "Not modified (If-None-Match)"},
                "410": {"description": "The offset is older than what is kept"},
                **_errors(),
            },
        }
    }


def _durable_stream_paths() -> dict[str, Any]:
    return {
        "/v1/stream/generations/{generation_id}": {
            **_durable_stream_read("A generation as a Durable Stream", _GENERATION_ID),
            "post": {
                "summary": "Append tokens to an external generation (Durable Streams protocol)",
                "description": "application/json: a token's text, or an array of them; Stream-Closed: true ends "
                "the generation; Producer-Id, Producer-Epoch and Producer-Seq make each batch idempotent.",
                "parameters": [_GENERATION_ID],
                "requestBody": {"required": False, "content": {"application/json": {"schema": {}}}},
                "responses": {
                    "200": {"description": "Appended by an idempotent producer"},
                    "204": {"description": "Appended, ended, or a producer's duplicate"},
                    "403": {"description": "A stale producer epoch"},
                    "409": {"description": "Ended, not external, another content type, or a producer sequence gap"},
                    **_errors(),
                },
            },
        },
        "/v1/stream/sessions/{session_id}": _durable_stream_read("A session as a Durable Stream", _SESSION_ID),
        "/v1/stream/{name}": _durable_stream_store(),
    }


def _durable_stream_store() -> dict[str, Any]:
    """A stream clients create and write over the protocol (docs/durable-streams.md#streams-you-write)."""
    name = {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}
    body = {"required": False, "content": {"*/*": {"schema": {"type": "string", "format": "binary"}}}}
    read = _durable_stream_read("Read a stream written over the protocol", name)["get"]
    read["description"] = (
        "Catch-up, long-poll or SSE read of the stream's messages (a JSON array in JSON mode, the bytes otherwise)."
    )
    read["responses"]["200"]["content"] = {"*/*": {"schema": {"type": "string", "format": "binary"}}, **_SSE}
    return {
        "put": {
            "summary": "Create a stream (Durable Streams protocol)",
            "description": "Content-Type, Stream-TTL or Stream-Expires-At, Stream-Closed; the body is its first "
            "content.",
            "parameters": [name],
            "requestBody": body,
            "responses": {
                "201": {"description": "Created"},
                "200": {"description": "The same stream exists"},
                "409": {"description": "A stream with another configuration exists"},
                **_errors(),
            },
        },
        "post": {
            "summary": "Append to a stream, or close it (Durable Streams protocol)",
            "description": "Stream-Seq, Stream-Closed, and the idempotent producer's Producer-Id, Producer-Epoch, "
            "Producer-Seq.",
            "parameters": [name],
            "requestBody": body,
            "responses": {
                "200": {"description": "Appended by an idempotent producer"},
                "204": {"description": "Appended, closed, or a producer's duplicate"},
                "403": {"description": "A stale producer epoch"},
                "409": {
                    "description": "Closed, another content type, a producer sequence gap or a Stream-Seq regression"
                },
                **_errors(),
            },
        },
        "delete": {
            "summary": "Delete a stream (Durable Streams protocol)",
            "parameters": [name],
            "responses": {"204": {"description": "Deleted"}, **_errors()},
        },
        "get": read,
    }


def _openai_paths() -> dict[str, Any]:
    completion = _json(schemas.ChatCompletion, "Completion or stream")
    completion["content"].update(_SSE)
    return {
        "/v1/chat/completions": {
            "post": {
                "summary": "OpenAI Chat Completions, backed by a generation",
                # OpenAI's request as is: it is mapped onto a GenerationRequest, which validates it.
                "requestBody": {"required": True, "content": {"application/json": {"schema": {"type": "object"}}}},
                "responses": {"200": completion, **_openai_errors(502, 504)},
            }
        },
        "/v1/models": {
            "get": {
                "summary": "The models a request may name, in OpenAI's list shape",
                "responses": {"200": _json(schemas.ModelList), **_openai_errors()},
            }
        },
        "/v1/models/{model_id}": {
            "get": {
                "summary": "One model, as an OpenAI model object",
                "parameters": [{"name": "model_id", "in": "path", "required": True, "schema": {"type": "string"}}],
                "responses": {"200": _json(schemas.ModelObject), **_openai_errors()},
            }
        },
    }


def _admin_paths() -> dict[str, Any]:
    return {
        "/v1/dead-letters": {
            "get": {
                "summary": "Dead letters, newest first (admin scope)",
                "parameters": [_limit(500), _query("before")],
                "responses": {"200": _json(schemas.DeadLetterList), **_errors()},
            }
        },
        "/v1/dead-letters/{dead_letter_id}/replay": {
            "post": {
                "summary": "Try a held generation's dead entry again (admin scope)",
                "parameters": [_DEAD_LETTER_ID],
                "responses": {"202": _json(schemas.ReplayAccepted, "Accepted"), **_errors(409)},
            }
        },
        "/v1/dead-letters/{dead_letter_id}": {
            "delete": {
                "summary": "Drop a dead letter; a held generation ends with poison_entry (admin scope)",
                "parameters": [_DEAD_LETTER_ID],
                "responses": {"200": _json(schemas.DeadLetterDropped), **_errors()},
            }
        },
        "/v1/stats": {
            "get": {"summary": "Per-model statistics", "responses": {"200": _json(schemas.Stats), **_errors()}}
        },
    }


@bp.get("/openapi.json")
def openapi() -> Response:
    return jsonify(document())

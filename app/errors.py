"""Every error the HTTP API returns, as JSON: ``{"error": {"code", "message", "details"}}``.

The OpenAI-compatible routes (``OPENAI_PATHS``) answer in OpenAI's shape instead,
``{"error": {"message", "type", "param", "code"}}``, so that OpenAI client libraries read them; the shape is
chosen here, by path, so that errors raised before the view runs (authentication, rate limits, a body too
large, an unknown path below them) take it too.
"""

from __future__ import annotations

import logging
import re
from typing import Any

import redis
from flask import Flask, Response, has_request_context, request
from werkzeug.exceptions import HTTPException, NotFound
from werkzeug.routing import RequestRedirect

from app.responses import json_response
from app.schemas import ErrorInfo, ErrorResponse, OpenAIErrorResponse
from bridge.connections import UNAVAILABLE
from bridge.memory import is_out_of_memory

logger = logging.getLogger(__name__)

_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "validation_failed",
    429: "rate_limited",
    500: "internal_error",
    503: "unavailable",
}

# Paths (and everything below them) that speak OpenAI's protocol.
OPENAI_PATHS = ("/v1/chat/completions", "/v1/models")

_OPENAI_TYPES = {
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    429: "rate_limit_error",
}


class ApiError(Exception):
    """Raised in a view to answer with a JSON error."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        details: Any = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details
        self.headers = headers or {}


def invalid(details: list[dict[str, Any]]) -> ApiError:
    """422 listing each field; the message names the first problems so that a human reading it knows what to fix."""
    summary = "; ".join(f"{d['field']}: {d['message']}" for d in details[:3])
    more = f" (and {len(details) - 3} more)" if len(details) > 3 else ""
    return ApiError(422, "validation_failed", f"The request is not valid: {summary}{more}", details=details)


def out_of_memory(retry_after_s: int) -> ApiError:
    """503 ``redis_out_of_memory``: Redis is (nearly) at ``maxmemory`` and takes no new work for now."""
    return ApiError(
        503,
        "redis_out_of_memory",
        "The stream store is out of memory and accepts no new work; retry shortly.",
        headers={"Retry-After": str(retry_after_s)},
    )


def speaks_openai(path: str) -> bool:
    """Whether errors on ``path`` take OpenAI's shape."""
    return any(path == prefix or path.startswith(prefix + "/") for prefix in OPENAI_PATHS)


def openai_error(status: int, code: str, message: str, details: Any = None) -> dict[str, Any]:
    """OpenAI's error object; ``param`` names the first field at fault, ``details`` (when any) lists them all."""
    error_type = _OPENAI_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    error: dict[str, Any] = {"message": message, "type": error_type, "param": _param(details), "code": code}
    if details is not None:
        error["details"] = details
    return error


def _param(details: Any) -> str | None:
    if isinstance(details, list) and details and isinstance(details[0], dict):
        field = details[0].get("field")
        return field if isinstance(field, str) and field != "body" else None
    return None


def error_response(
    status: int, code: str, message: str, details: Any = None, headers: dict[str, str] | None = None
) -> Response:
    body: ErrorResponse | OpenAIErrorResponse
    if has_request_context() and speaks_openai(request.path):
        body = OpenAIErrorResponse.model_validate({"error": openai_error(status, code, message, details)})
    else:
        body = ErrorResponse(error=ErrorInfo(code=code, message=message, details=details))
    return json_response(body, status, headers)


def under_v1(path: str) -> bool:
    """Whether ``path`` is in the API (with its slashes merged, as Werkzeug's routing merges them)."""
    merged = re.sub("/+", "/", path)
    return merged == "/v1" or merged.startswith("/v1/")


def register_error_handlers(app: Flask, *, retry_after_s: int) -> None:
    @app.before_request
    def _no_redirect_in_v1() -> None:
        # Werkzeug answers a path with a doubled slash with a redirect to the merged one, as an HTML page; in /v1 such a
        # path is not found (JSON 404), like any other path of no route: its meaning is never guessed.
        if isinstance(request.routing_exception, RequestRedirect) and under_v1(request.path):
            raise NotFound()

    @app.errorhandler(ApiError)
    def _api_error(exc: ApiError) -> Response:
        return error_response(exc.status, exc.code, exc.message, exc.details, exc.headers)

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> Response:
        status = exc.code or 500
        code = _HTTP_CODES.get(status, "http_error")
        message = exc.description or code.replace("_", " ")
        headers = {"Allow": exc.response.headers["Allow"]} if exc.response and "Allow" in exc.response.headers else {}
        if status == 405 and hasattr(exc, "valid_methods") and exc.valid_methods:
            headers["Allow"] = ", ".join(exc.valid_methods)
        return error_response(status, code, message, headers=headers)

    def _redis_down(exc: Exception) -> Response:
        logger.warning("Redis unavailable: %s", exc)
        return error_response(
            503,
            "redis_unavailable",
            "The stream store is unavailable; retry shortly.",
            headers={"Retry-After": str(retry_after_s)},
        )

    for error in UNAVAILABLE:
        app.register_error_handler(error, _redis_down)

    @app.errorhandler(redis.ResponseError)
    def _redis_refused(exc: redis.ResponseError) -> Response:
        # A write refused at maxmemory wrote nothing (a script is refused before its first write).
        if is_out_of_memory(exc):
            logger.warning("Redis out of memory: %s", exc)
            refused = out_of_memory(retry_after_s)
            return error_response(refused.status, refused.code, refused.message, headers=refused.headers)
        logger.exception("Unhandled error: %s", exc)
        return error_response(500, "internal_error", "An internal error occurred.")

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response:
        logger.exception("Unhandled error: %s", exc)
        return error_response(500, "internal_error", "An internal error occurred.")

"""JSON bodies from the schemas models: the bytes ``jsonify`` writes for the same dict, and no key a body never had."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask, jsonify

from app import create_app
from app.responses import json_response
from app.schemas import (
    ErrorInfo,
    ErrorResponse,
    GenerationCreated,
    LatencyPercentiles,
    ModelStats,
    OpenAIErrorInfo,
    OpenAIErrorResponse,
    Percentiles,
    ReadersSummary,
    Stats,
    TokenUsage,
)
from bridge.settings import Settings


@pytest.fixture(scope="module")
def app() -> Iterator[Flask]:
    flask_app = create_app(Settings(auth_disabled=True, redis_url="redis://127.0.0.1:1"))
    with flask_app.app_context():
        yield flask_app


def _created(**extra: Any) -> GenerationCreated:
    return GenerationCreated(
        id="gen_1",
        session_id="ses_1",
        status="queued",
        model="echo",
        events_url="/v1/generations/gen_1/events",
        ws_url="/v1/generations/gen_1/ws",
        stream_token="t1",
        session_events_url="/v1/sessions/ses_1/events",
        session_stream_token="t2",
        **extra,
    )


def _stats(usage: TokenUsage | None) -> Stats:
    figures = ModelStats(
        generations=0,
        by_status={},
        tokens=0,
        ttft_ms=LatencyPercentiles(p50=None, p95=None, samples=0),
        tokens_per_s=Percentiles(p50=1.5, p95=None),
    )
    return Stats(models={"echo": figures}, readers=ReadersSummary(total=0, generations=0, sessions=0), usage=usage)


def test_a_body_is_the_bytes_jsonify_writes_for_its_dict(app: Flask) -> None:
    # Given an error with a null, a non-ASCII message and nested details
    details = [{"field": "prompt", "message": "trop long — 2 000 caractères"}]
    body = ErrorResponse(error=ErrorInfo(code="validation_failed", message="Café ☕", details=details))

    # When it is written with a status and a header
    response = json_response(body, 422, {"Retry-After": "3"})

    # Then it is what jsonify wrote for the dict, keys in the same order, with them
    expected = jsonify({"error": {"code": "validation_failed", "message": "Café ☕", "details": details}})
    assert response.get_data() == expected.get_data()
    assert response.status_code == 422 and response.headers["Retry-After"] == "3"
    assert response.mimetype == "application/json"


def test_a_null_is_written_except_where_the_body_never_had_the_key(app: Flask) -> None:
    # A generation submitted without a fallback has no fallback_from; one with a fallback has it last
    assert "fallback_from" not in json_response(_created()).get_json()
    assert list(json_response(_created(fallback_from="gpt")).get_json())[-1] == "fallback_from"

    # Stats without a key's usage have no usage, but their own nulls stay (and so do a budget's)
    assert json_response(_stats(None)).get_json() == {
        "models": {
            "echo": {
                "generations": 0,
                "by_status": {},
                "tokens": 0,
                "ttft_ms": {"p50": None, "p95": None, "samples": 0},
                "tokens_per_s": {"p50": 1.5, "p95": None},
            }
        },
        "readers": {"total": 0, "generations": 0, "sessions": 0},
    }
    usage = TokenUsage(api_key="app", tokens_this_minute=1, tokens_today=2, tokens_per_minute=None, tokens_per_day=9)
    assert json_response(_stats(usage)).get_json()["usage"]["tokens_per_minute"] is None

    # OpenAI's error keeps a null param and code, and has details only when there are some
    bare = OpenAIErrorResponse(error=OpenAIErrorInfo(message="m", type="server_error", param=None, code=None))
    written = b'{"error":{"message":"m","type":"server_error","param":null,"code":null}}\n'
    assert json_response(bare).get_data() == written

"""The bodies the API answers with, as pydantic models: the routes write them (``app.responses.json_response``), and
the OpenAPI document describes them, from the same models.

Request bodies are the models that validate them (``GenerationRequest``, ``TokenBatch``, ``Completion``).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from bridge.generation import GenerationRecord


def _is_none(value: object) -> bool:
    return value is None


class _Response(BaseModel):
    # Every field is written, null included: the document says so by marking fields with defaults required.
    model_config = ConfigDict(json_schema_serialization_defaults_required=True)


class ErrorInfo(BaseModel):
    code: str
    message: str
    details: Any = None


class ErrorResponse(BaseModel):
    """``{"error": {"code", "message", "details"}}``: every error of the tokenbridge routes."""

    error: ErrorInfo


class OpenAIErrorInfo(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None
    details: Any = Field(default=None, exclude_if=_is_none)


class OpenAIErrorResponse(BaseModel):
    """OpenAI's error shape: every error of the OpenAI-compatible routes."""

    error: OpenAIErrorInfo


class GenerationCreated(BaseModel):
    """``202`` to ``POST /v1/generations``: where to read the new generation, with the tokens to read it."""

    id: str
    session_id: str
    status: str
    model: str
    events_url: str
    ws_url: str
    stream_token: str
    session_events_url: str
    session_stream_token: str
    fallback_from: str | None = Field(
        default=None, exclude_if=_is_none, description="the model asked for, while its circuit is open"
    )


class Generation(GenerationRecord):
    """A generation's state and text so far."""

    model_config = ConfigDict(json_schema_serialization_defaults_required=True)

    attempt: int = Field(default=0, exclude=True)
    readers: int = Field(ge=0, description="live readers across every web process")

    @classmethod
    def of(cls, record: GenerationRecord, readers: int) -> Generation:
        """``record`` with its live reader count."""
        return cls(**dict(record), readers=readers)


class SessionGenerations(_Response):
    data: list[Generation]
    has_more: bool


class StreamToken(_Response):
    stream_token: str
    expires_at: int


class CancelAccepted(_Response):
    id: str
    status: Literal["cancelling"]


class TokensAccepted(_Response):
    id: str
    next_index: int
    duplicate: bool


class CompleteAccepted(_Response):
    id: str
    status: Literal["completing"]


class ModelInfo(_Response):
    """tokenbridge's own fields of a model (OpenAI client libraries ignore them)."""

    provider: str
    max_tokens: int


class ModelObject(_Response):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str
    tokenbridge: ModelInfo


class ModelList(_Response):
    object: Literal["list"]
    data: list[ModelObject]


class DeadLetterView(_Response):
    id: str
    at: float
    generation_id: str
    entry_id: str
    error: str
    deliveries: int | None
    consumer: str
    held: bool = Field(description="its generation waits for a replay or a drop")
    fields: Any


class DeadLetterList(_Response):
    data: list[DeadLetterView]
    total: int


class RecentDeadLetters(_Response):
    total: int
    recent: list[DeadLetterView]


class DashboardData(_Response):
    """``GET /dashboard/data``: what the dashboard cannot read from /readyz, /metrics or /v1/stats."""

    dead_letters: RecentDeadLetters


class ReplayAccepted(_Response):
    id: str
    generation_id: str
    status: Literal["replaying"]


class DeadLetterDropped(_Response):
    id: str
    generation_id: str
    dropped: bool
    ended: bool


class Percentiles(_Response):
    p50: float | None
    p95: float | None


class LatencyPercentiles(Percentiles):
    samples: int


class ModelStats(_Response):
    generations: int
    by_status: dict[str, int]
    tokens: int
    ttft_ms: LatencyPercentiles
    tokens_per_s: Percentiles


class ReadersSummary(_Response):
    total: int
    generations: int
    sessions: int


class TokenUsage(_Response):
    """The calling key's tokens in the current windows, and its budget (null where unlimited)."""

    api_key: str
    tokens_this_minute: int
    tokens_today: int
    tokens_per_minute: int | None
    tokens_per_day: int | None


class Stats(BaseModel):
    models: dict[str, ModelStats]
    readers: ReadersSummary
    usage: TokenUsage | None = Field(default=None, exclude_if=_is_none, description="only for an API key")


class ChatMessage(BaseModel):
    role: Literal["assistant"]
    content: str | None
    reasoning_content: str | None = Field(default=None, exclude_if=_is_none)
    tool_calls: list[dict[str, Any]] | None = Field(default=None, exclude_if=_is_none)


class ChatChoice(_Response):
    index: int
    message: ChatMessage
    finish_reason: str


class ChatUsage(_Response):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ChatCompletion(_Response):
    """A whole answer of ``POST /v1/chat/completions`` (a stream sends ``chat.completion.chunk`` events instead)."""

    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[ChatChoice]
    usage: ChatUsage


class Health(_Response):
    """``GET /healthz``: alive, and the running release."""

    status: Literal["ok"]
    version: str


class Readiness(BaseModel):
    """``GET /readyz``: the verdict, and each check's when the caller may see them."""

    status: Literal["healthy", "degraded", "unhealthy"]
    checks: dict[str, dict[str, Any]] | None = Field(default=None, exclude_if=_is_none)

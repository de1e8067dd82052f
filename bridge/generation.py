"""A generation as submitted (the request) and as stored (the ``:meta`` record)."""

from __future__ import annotations

import secrets
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from bridge.events import GenerationStatus

# Ids end up inside hash tags and URLs: no braces, no slashes, bounded length.
ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$"
MAX_PROMPT_CHARS = 200_000
MAX_MESSAGES = 512


def new_generation_id() -> str:
    return f"gen_{secrets.token_hex(12)}"


def new_session_id() -> str:
    return f"ses_{secrets.token_hex(12)}"


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Literal["system", "user", "assistant", "tool"]
    content: str = Field(max_length=MAX_PROMPT_CHARS)


class GenerationRequest(BaseModel):
    """The body of ``POST /v1/generations``."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1, max_length=128)
    prompt: str | None = Field(default=None, min_length=1, max_length=MAX_PROMPT_CHARS)
    messages: list[Message] | None = Field(default=None, min_length=1, max_length=MAX_MESSAGES)
    session_id: str | None = Field(default=None, pattern=ID_PATTERN)
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    stop: list[str] | None = Field(default=None, max_length=4)
    metadata: dict[str, str] | None = Field(default=None, max_length=16)
    options: dict[str, Any] | None = None

    @field_validator("stop", mode="before")
    @classmethod
    def _stop_as_list(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @model_validator(mode="after")
    def _prompt_or_messages(self) -> GenerationRequest:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give exactly one of prompt or messages")
        return self

    def input_text(self) -> str:
        """The prompt, or the content of the last user message (the last message when no user spoke)."""
        if self.prompt is not None:
            return self.prompt
        assert self.messages is not None
        for message in reversed(self.messages):
            if message.role == "user":
                return message.content
        return self.messages[-1].content


class GenerationRecord(BaseModel):
    """What ``:meta`` holds about a generation, as returned by ``GET /v1/generations/{id}``."""

    id: str
    session_id: str
    model: str
    status: GenerationStatus
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None
    finish_reason: str | None = None
    usage: dict[str, int] = Field(default_factory=lambda: {"prompt_tokens": 0, "completion_tokens": 0})
    text: str = ""
    error: dict[str, Any] | None = None
    attempt: int = 0

    @classmethod
    def from_meta(cls, generation_id: str, meta: dict[str, str]) -> GenerationRecord:
        def number(name: str) -> float | None:
            value = meta.get(name)
            return float(value) if value else None

        return cls(
            id=generation_id,
            session_id=meta.get("session_id", ""),
            model=meta.get("model", ""),
            status=GenerationStatus(meta.get("status", GenerationStatus.QUEUED.value)),
            created_at=float(meta.get("created_at", 0)),
            started_at=number("started_at"),
            finished_at=number("finished_at"),
            finish_reason=meta.get("finish_reason") or None,
            usage={
                "prompt_tokens": int(meta.get("prompt_tokens", 0)),
                "completion_tokens": int(meta.get("completion_tokens", 0)),
            },
            text=meta.get("text", ""),
            error=orjson.loads(meta["error"]) if meta.get("error") else None,
            attempt=int(meta.get("attempt", 0)),
        )

    def public(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude={"attempt"})

"""A generation as submitted (the request) and as stored (the ``:meta`` record)."""

from __future__ import annotations

import hashlib
import secrets
from typing import Annotated, Any, Literal

import orjson
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    StringConstraints,
    Tag,
    field_validator,
    model_validator,
)

from bridge.content import MAX_TEXT_CHARS, Content, images_of, text_of
from bridge.events import GenerationStatus

# Ids end up inside hash tags and URLs: no braces, no slashes, bounded length.
ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$"
MAX_PROMPT_CHARS = MAX_TEXT_CHARS
MAX_MESSAGES = 512


def new_generation_id() -> str:
    return f"gen_{secrets.token_hex(12)}"


def new_session_id() -> str:
    return f"ses_{secrets.token_hex(12)}"


MAX_TOOLS = 128


class FunctionCall(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=128)
    arguments: str = Field(default="", max_length=MAX_PROMPT_CHARS, description="the arguments, as JSON text")


class ToolCall(BaseModel):
    """A tool call the model made earlier, sent back in an assistant message (OpenAI's shape)."""

    model_config = ConfigDict(extra="forbid")
    id: str = Field(min_length=1, max_length=256)
    type: Literal["function"] = "function"
    function: FunctionCall


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Literal["system", "user", "assistant", "tool"]
    # A string, or text and image parts (bridge.content); images only in user messages, as OpenAI takes them.
    content: Content | None = None
    name: str | None = Field(default=None, max_length=128)
    # An assistant message that called tools, and the tool message that answers one call.
    tool_calls: list[ToolCall] | None = Field(default=None, min_length=1, max_length=MAX_TOOLS)
    tool_call_id: str | None = Field(default=None, min_length=1, max_length=256)

    @model_validator(mode="after")
    def _content_or_calls(self) -> Message:
        if self.tool_calls is not None and self.role != "assistant":
            raise ValueError("only an assistant message carries tool_calls")
        if self.content is None and self.tool_calls is None:
            raise ValueError("a message needs content (or, from the assistant, tool_calls)")
        if self.role != "user" and images_of(self.content):
            raise ValueError("only a user message carries image parts")
        return self

    @property
    def text(self) -> str:
        """The content's text: the string, or the text parts joined."""
        return text_of(self.content)


class FunctionTool(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.-]+$")
    description: str | None = Field(default=None, max_length=10_000)
    parameters: dict[str, Any] | None = Field(default=None, description="JSON Schema of the arguments")
    strict: bool | None = None


class Tool(BaseModel):
    """A tool the model may call (OpenAI's shape: ``{"type": "function", "function": {...}}``)."""

    model_config = ConfigDict(extra="forbid")
    type: Literal["function"] = "function"
    function: FunctionTool


class NamedToolChoice(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["function"] = "function"
    function: dict[str, str]


class JSONSchemaFormat(BaseModel):
    model_config = ConfigDict(extra="forbid", serialize_by_alias=True)
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
    description: str | None = Field(default=None, max_length=10_000)
    # ``schema`` would shadow a BaseModel attribute: the field has another name, and the JSON one as its alias.
    schema_: dict[str, Any] | None = Field(default=None, alias="schema", description="JSON Schema of the answer")
    strict: bool | None = None


class ResponseFormat(BaseModel):
    """What the answer must be, in OpenAI's shape: text, a JSON object, or JSON that follows a schema."""

    model_config = ConfigDict(extra="forbid")
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JSONSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_with_its_type(self) -> ResponseFormat:
        if (self.type == "json_schema") != (self.json_schema is not None):
            raise ValueError("json_schema comes with the type json_schema, and only with it")
        return self


# logit_bias: token ids (as strings) to a bias from -100 to 100; an int stays an int upstream.
_TokenId = Annotated[str, StringConstraints(pattern=r"^[0-9]{1,10}$")]
_Bias = Annotated[
    Annotated[int, Field(ge=-100, le=100), Tag("<int>")] | Annotated[float, Field(ge=-100, le=100), Tag("<number>")],
    Discriminator(lambda value: "<int>" if isinstance(value, int) and not isinstance(value, bool) else "<number>"),
]
_INT64 = 2**63


# The request fields that steer how a model answers besides its input and length, added after the first ones: sent
# upstream under these names where the provider takes them (bridge.capabilities), taken as they are by
# /v1/chat/completions, and counted in a cached answer's key only when given (the keys of requests without them
# stay what they were).
ANSWER_FIELDS = (
    "parallel_tool_calls",
    "top_p",
    "top_k",
    "seed",
    "presence_penalty",
    "frequency_penalty",
    "logit_bias",
    "response_format",
)


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
    # Tools the model may call; its calls stream as ``tool_call`` events (models of the built-in providers
    # ignore them).
    tools: list[Tool] | None = Field(default=None, min_length=1, max_length=MAX_TOOLS)
    tool_choice: Literal["auto", "none", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    # Sampling as OpenAI names it (top_k: Anthropic's), sent to the providers that take it; a provider that does
    # not is refused, or drops it where its registry entry says so (bridge.capabilities).
    top_p: float | None = Field(default=None, ge=0, le=1)
    top_k: int | None = Field(default=None, ge=0)
    seed: int | None = Field(default=None, ge=-_INT64, lt=_INT64)
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    logit_bias: dict[_TokenId, _Bias] | None = Field(default=None, max_length=1024)
    response_format: ResponseFormat | None = None
    # The end user the request is for: sent upstream, recorded, and the name of the per-user limits.
    user: str | None = Field(default=None, min_length=1, max_length=256)

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
                return message.text
        return self.messages[-1].text


# A hash value of at most this many bytes keeps ``:meta`` a small hash (Redis' hash-max-listpack-value).
MAX_META_VALUE_BYTES = 64


def recorded_user(user: str) -> str:
    """A request's ``user`` as a generation records it: itself, or when longer than ``MAX_META_VALUE_BYTES``,
    ``sha256:`` and 40 hex digits of its digest. The per-user limits are named after this."""
    if len(user.encode()) <= MAX_META_VALUE_BYTES:
        return user
    return "sha256:" + hashlib.sha256(user.encode()).hexdigest()[:40]


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
    user: str | None = Field(default=None, description="the request's user (a digest of one over 64 bytes)")
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
            user=meta.get("user") or None,
            attempt=int(meta.get("attempt", 0)),
        )

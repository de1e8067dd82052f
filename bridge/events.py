"""The event schema: what producers write to ``:raw`` and what clients read from ``:out``.

The hot path (one event per token) moves plain dicts through orjson; the pydantic models below are the
documented schema of each event's ``data`` and are used to validate at the edges.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict


class GenerationStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in FINISHED_STATUSES


# The statuses a generation never leaves; members are str, so a status read from Redis is found as is.
FINISHED_STATUSES = frozenset({GenerationStatus.COMPLETED, GenerationStatus.FAILED, GenerationStatus.CANCELLED})


class EventType(StrEnum):
    TOKEN = "token"
    # What a model says that is not answer text: its reasoning, and the tool calls it makes (streamed deltas).
    REASONING = "reasoning"
    TOOL_CALL = "tool_call"
    RESTART = "restart"
    DONE = "done"
    ERROR = "error"
    CANCELLED = "cancelled"


TERMINAL_EVENTS = frozenset({EventType.DONE.value, EventType.ERROR.value, EventType.CANCELLED.value})

STATUS_AFTER = {
    EventType.DONE.value: GenerationStatus.COMPLETED,
    EventType.ERROR.value: GenerationStatus.FAILED,
    EventType.CANCELLED.value: GenerationStatus.CANCELLED,
}


class _Data(BaseModel):
    model_config = ConfigDict(extra="allow")
    seq: int


class TokenData(_Data):
    content: str
    ts: float


class ReasoningData(_Data):
    content: str
    ts: float


class ToolCallData(_Data):
    """One delta of a tool call: ``id`` and ``name`` come with a call's first delta; ``arguments`` are JSON text
    in pieces, to be joined in order per ``index``."""

    index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""
    ts: float


class RestartData(_Data):
    reason: str


class Usage(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0


class DoneData(_Data):
    finish_reason: str
    usage: Usage


class ErrorData(_Data):
    code: str
    message: str


class CancelledData(_Data):
    pass


DATA_MODELS: dict[str, type[_Data]] = {
    EventType.TOKEN.value: TokenData,
    EventType.REASONING.value: ReasoningData,
    EventType.TOOL_CALL.value: ToolCallData,
    EventType.RESTART.value: RestartData,
    EventType.DONE.value: DoneData,
    EventType.ERROR.value: ErrorData,
    EventType.CANCELLED.value: CancelledData,
}


@dataclass(slots=True)
class Event:
    """One entry of a generation stream: its id, its type and its data (without ``seq`` until processed)."""

    id: str
    type: str
    data: dict[str, Any] = field(default_factory=dict)
    attempt: int = 0

    @property
    def terminal(self) -> bool:
        return self.type in TERMINAL_EVENTS


def decode_raw(entry_id: str, fields: dict[str, str]) -> Event:
    return Event(
        id=entry_id,
        type=fields["type"],
        data=orjson.loads(fields.get("data", "{}")),
        attempt=int(fields.get("attempt", 0)),
    )


def encode_out(event: Event) -> dict[str, bytes | str]:
    """Fields of an ``:out`` entry: the event name and its JSON data, ready to be sent as is."""
    return {"event": event.type, "data": orjson.dumps(event.data)}


@dataclass(slots=True)
class ClientEvent:
    """One event as a reader sees it: entry id, event name and the JSON text of its data.

    Read from a session stream, ``ref`` is the (generation's place in the session, ``:out`` id) the entry points
    at, and ``data`` is empty until ``bridge.sessions`` resolves it.
    """

    id: str
    event: str
    data: str
    ref: tuple[int, str] | None = None
    # The event as an SSE frame and as a WebSocket message, made by the first reader that sends it (the hub hands
    # the same event to every reader of the stream).
    sse: str = field(default="", repr=False, compare=False)
    ws: str = field(default="", repr=False, compare=False)

    @property
    def terminal(self) -> bool:
        return self.event in TERMINAL_EVENTS

    def json(self) -> dict[str, Any]:
        loaded: dict[str, Any] = orjson.loads(self.data)
        return loaded


def decode_out(entry_id: str, fields: dict[str, str]) -> ClientEvent:
    n = fields.get("n")
    if n is not None:
        # A session stream's entry: it points at a generation's event (see bridge.sessions).
        return ClientEvent(entry_id, fields.get("e", EventType.TOKEN.value), "", (int(n), fields.get("i", "")))
    return ClientEvent(id=entry_id, event=fields["event"], data=fields.get("data", "{}"))

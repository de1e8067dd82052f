"""Dead letters: raw entries the processor chain could not process, kept in ``llm:dead`` for an operator.

An entry that fails ``DEAD_LETTER_AFTER`` deliveries is recorded here. With ``DEAD_LETTER_HOLD_S`` > 0 its
generation is *held* for that long instead of ending at once: the entry stays pending, later entries wait
behind it, and an operator may **replay** it (the consumer tries it again now; the generation continues if
it goes through) or **drop** it (the generation ends with ``poison_entry``). A hold that runs out gets one
last try, then the generation ends. The consumer that owns the generation hears of the decision through
``llm:gen:{G}:replay``, which it reads at each heartbeat.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import orjson
import redis

from bridge import keys
from bridge.events import FINISHED_STATUSES


class Decision(StrEnum):
    REPLAY = "replay"
    DROP = "drop"


@dataclass(frozen=True, slots=True)
class DeadLetter:
    id: str
    generation_id: str
    entry_id: str
    error: str
    deliveries: int | None
    consumer: str
    fields: Any
    held: bool  # its generation is waiting for a decision
    owner: str  # the owner of its generation ("" once the generation expired)

    def public(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "at": int(self.id.split("-", 1)[0]) / 1000,  # the stream id's milliseconds: when it was recorded
            "generation_id": self.generation_id,
            "entry_id": self.entry_id,
            "error": self.error,
            "deliveries": self.deliveries,
            "consumer": self.consumer,
            "held": self.held,
            "fields": self.fields,
        }


def _parse(entry_id: str, fields: dict[str, str], meta: list[str | None]) -> DeadLetter:
    status, held_entry, owner, key_name = meta
    deliveries = fields.get("deliveries", "")
    try:
        raw_fields = orjson.loads(fields.get("fields", "null"))
    except orjson.JSONDecodeError:
        raw_fields = fields.get("fields")
    return DeadLetter(
        id=entry_id,
        generation_id=fields.get("generation_id", ""),
        entry_id=fields.get("entry_id", ""),
        error=fields.get("error", ""),
        deliveries=int(deliveries) if deliveries.isdigit() else None,
        consumer=fields.get("consumer", ""),
        fields=raw_fields,
        held=(
            fields.get("held") == "1"
            and status is not None
            and status not in FINISHED_STATUSES
            and held_entry == fields.get("entry_id")
        ),
        owner=owner or key_name or "",
    )


def _with_status(client: redis.Redis, entries: list[tuple[str, dict[str, str]]]) -> list[DeadLetter]:
    pipe = client.pipeline(transaction=False)
    for _, fields in entries:
        pipe.hmget(keys.gen_meta(fields.get("generation_id", "")), "status", "held_entry", "owner", "api_key")
    metas = pipe.execute() if entries else []
    return [_parse(entry_id, fields, meta) for (entry_id, fields), meta in zip(entries, metas, strict=True)]


def list_dead_letters(client: redis.Redis, *, limit: int, before: str | None = None) -> tuple[list[DeadLetter], int]:
    """The newest dead letters (older than ``before`` when given), and how many there are in all."""
    pipe = client.pipeline(transaction=False)
    pipe.xrevrange(keys.DEAD_LETTERS, f"({before}" if before else "+", "-", count=limit)
    pipe.xlen(keys.DEAD_LETTERS)
    entries, total = pipe.execute()
    return _with_status(client, entries), int(total)


def get_dead_letter(client: redis.Redis, dead_letter_id: str) -> DeadLetter | None:
    entries: Any = client.xrange(keys.DEAD_LETTERS, dead_letter_id, dead_letter_id)
    found = _with_status(client, entries)
    return found[0] if found else None


def decide(client: redis.Redis, letter: DeadLetter, decision: Decision, *, ttl_ms: int) -> None:
    """Remove the dead letter and, when its generation is held, tell the owning consumer what to do."""
    pipe = client.pipeline(transaction=False)
    if letter.held:
        pipe.set(keys.gen_replay(letter.generation_id), f"{decision.value}:{letter.entry_id}", px=ttl_ms)
    pipe.xdel(keys.DEAD_LETTERS, letter.id)
    pipe.execute()


def record(
    client: redis.Redis | redis.client.Pipeline,
    *,
    generation_id: str,
    entry_id: str,
    fields: dict[str, str],
    error: str,
    deliveries: int,
    consumer: str,
    held: bool,
    max_length: int,
) -> None:
    """Append a dead letter (``held``: its generation waits for a decision)."""
    client.xadd(
        keys.DEAD_LETTERS,
        {
            "generation_id": generation_id,
            "entry_id": entry_id,
            "fields": orjson.dumps(fields),
            "error": error,
            "deliveries": deliveries,
            "consumer": consumer,
            "held": "1" if held else "0",
        },
        maxlen=max_length,
        approximate=True,
    )

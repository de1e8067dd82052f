"""What a consumer keeps about a generation it owns, beside what its processors see (``GenerationState``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from bridge import keys
from workers.processors import GenerationState


@dataclass(slots=True)
class OwnedGeneration:
    """A generation this consumer owns: the processors' ``gen`` and the consumer's bookkeeping of it."""

    gen: GenerationState
    # The work entry that hands this generation to us, and the work-stream shard that holds it.
    work_id: str
    work_stream: str = keys.WORK_STREAM
    # Re-read our own pending entries (after a failure or an outage), when (monotonic s), and after how many tries.
    pending_retry: bool = False
    retry_at: float = 0.0
    failures: int = 0
    # An entry was given up on: the generation ends with this error, whatever the producer ends with.
    poisoned: bool = False
    poison: dict[str, Any] | None = None
    # A dead entry the generation waits on (DEAD_LETTER_HOLD_S) until a replay, a drop, or this UNIX time.
    held_entry: str | None = None
    held_until: float = 0.0
    # The ``:out`` commit (``:meta`` ``last_id``) the state reflects: its next commit is fenced on it.
    last_id: str = ""
    # The keys of its commits (made once: a commit per batch needs the same names).
    commit_keys: list[str] = field(default_factory=list)
    # On a cluster: its session has every event this consumer committed of it since it took it.
    session_synced: bool = False

    @property
    def generation_id(self) -> str:
        return self.gen.generation_id

    @classmethod
    def from_meta(
        cls, generation_id: str, work_id: str, meta: dict[str, str], *, work_stream: str = keys.WORK_STREAM
    ) -> OwnedGeneration:
        return cls(
            gen=GenerationState.from_meta(generation_id, meta),
            work_id=work_id,
            work_stream=work_stream,
            last_id=meta.get("last_id", ""),
            held_entry=meta.get("held_entry") or None,
            held_until=float(meta.get("held_until") or 0),
        )

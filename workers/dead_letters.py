"""Dead letters on the consumer's side: an entry that cannot be processed is retried, held, replayed or dropped.

After ``DEAD_LETTER_AFTER`` deliveries the entry is recorded in ``llm:dead`` (``bridge.dead_letters``) and its
generation ends with ``poison_entry``; with ``DEAD_LETTER_HOLD_S`` the generation first waits that long for an
operator to replay or drop the entry.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import redis

from bridge import dead_letters, keys
from bridge.dead_letters import Decision
from bridge.settings import Settings
from workers import metrics
from workers.owned import OwnedGeneration

logger = logging.getLogger(__name__)

Fail = Callable[[str, str, str], None]


class DeadLetters:
    """What a consumer does with an entry that failed, and with an operator's decision about a held one."""

    def __init__(self, client: redis.Redis, settings: Settings, *, name: str, group: str, fail: Fail) -> None:
        self.client = client
        self.settings = settings
        self.name = name
        self.group = group
        self.fail = fail

    def handle_failure(
        self, owned: OwnedGeneration, entry_id: str, fields: dict[str, str], error: Exception, malformed: bool
    ) -> None:
        """Retry the entry with backoff; dead-letter it (or hold it) once it was delivered too often."""
        gid = owned.generation_id
        deliveries = self._deliveries(gid, entry_id)
        owned.failures += 1
        owned.pending_retry = True
        if malformed:
            self._dead_letter(owned, entry_id, fields, error, deliveries)
            return
        if deliveries >= self.settings.dead_letter_after:
            if owned.held_entry != entry_id and self.settings.dead_letter_hold_s > 0:
                self._hold(owned, entry_id, fields, error, deliveries)
            elif owned.held_entry == entry_id and time.time() < owned.held_until:
                # Still held (tried again after a takeover or a restart): wait on, recorded once already.
                owned.retry_at = time.monotonic() + owned.held_until - time.time()
            else:
                # Not held, or the hold ran out and its last try failed too.
                self._dead_letter(owned, entry_id, fields, error, deliveries, record=owned.held_entry != entry_id)
            return
        owned.retry_at = time.monotonic() + min(0.05 * 2**owned.failures, 2.0)
        logger.warning(
            "Generation %s: entry %s failed (delivery %s of %s): %s",
            gid,
            entry_id,
            deliveries,
            self.settings.dead_letter_after,
            error,
            extra={"generation_id": gid},
        )

    def apply_decisions(self, owned: list[OwnedGeneration]) -> None:
        """An operator's replay or drop of a held generation's dead letter (read at each heartbeat)."""
        held = [o for o in owned if o.held_entry and not o.poisoned]
        if not held:
            return
        pipe = self.client.pipeline(transaction=False)
        for o in held:
            pipe.getdel(keys.gen_replay(o.generation_id))
        for o, decision in zip(held, pipe.execute(), strict=True):
            action, _, entry_id = str(decision or "").partition(":")
            if entry_id != o.held_entry:
                continue  # none, or about an entry this generation no longer waits on
            if action == Decision.REPLAY:
                logger.info("Generation %s: entry %s replayed.", o.generation_id, entry_id)
                o.held_entry, o.failures, o.retry_at = None, 0, time.monotonic()
                self.client.hset(keys.gen_meta(o.generation_id), mapping={"held_entry": "", "held_until": ""})
            elif action == Decision.DROP:
                logger.warning("Generation %s: dead entry %s dropped.", o.generation_id, entry_id)
                deliveries = self._deliveries(o.generation_id, entry_id)
                self.client.xack(keys.gen_raw(o.generation_id), self.group, entry_id)
                self._give_up(o, entry_id, deliveries)

    def _deliveries(self, generation_id: str, entry_id: str) -> int:
        pending: Any = self.client.xpending_range(
            keys.gen_raw(generation_id), self.group, min=entry_id, max=entry_id, count=1
        )
        return int(pending[0]["times_delivered"]) if pending else 1

    def _dead_letter(
        self,
        owned: OwnedGeneration,
        entry_id: str,
        fields: dict[str, str],
        error: Exception,
        deliveries: int,
        *,
        record: bool = True,
    ) -> None:
        """Give up on the entry: record it (unless its hold recorded it already) and end the generation."""
        gid = owned.generation_id
        logger.error(
            "Generation %s: entry %s moved to %s after %s deliveries: %s",
            gid,
            entry_id,
            keys.DEAD_LETTERS,
            deliveries,
            error,
            extra={"generation_id": gid},
        )
        pipe = self.client.pipeline(transaction=False)
        if record:
            self._record(pipe, owned, entry_id, fields, error, deliveries, held=False)
        pipe.xack(keys.gen_raw(gid), self.group, entry_id)
        pipe.execute()
        if record:
            metrics.DEAD_LETTERS.inc()
        self._give_up(owned, entry_id, deliveries)

    def _give_up(self, owned: OwnedGeneration, entry_id: str, deliveries: int) -> None:
        """End the generation with ``poison_entry``; what it still holds pending is read again at once."""
        owned.retry_at = time.monotonic()
        owned.poisoned = True
        message = f"Entry {entry_id} could not be processed after {deliveries} deliveries."
        owned.poison = {"code": "poison_entry", "message": message}
        self.fail(owned.generation_id, "poison_entry", message)

    def _record(
        self,
        pipe: Any,
        owned: OwnedGeneration,
        entry_id: str,
        fields: dict[str, str],
        error: Exception,
        deliveries: int,
        *,
        held: bool,
    ) -> None:
        dead_letters.record(
            pipe,
            generation_id=owned.generation_id,
            entry_id=entry_id,
            fields=fields,
            error=repr(error),
            deliveries=deliveries,
            consumer=self.name,
            held=held,
            max_length=self.settings.dead_letter_max_length,
        )

    def _hold(
        self, owned: OwnedGeneration, entry_id: str, fields: dict[str, str], error: Exception, deliveries: int
    ) -> None:
        """Record the entry as a held dead letter; the generation waits for a replay or a drop (or the hold's end)."""
        gid = owned.generation_id
        hold_s = self.settings.dead_letter_hold_s
        owned.held_entry, owned.held_until = entry_id, time.time() + hold_s
        owned.retry_at = time.monotonic() + hold_s
        pipe = self.client.pipeline(transaction=False)
        self._record(pipe, owned, entry_id, fields, error, deliveries, held=True)
        pipe.hset(keys.gen_meta(gid), mapping={"held_entry": entry_id, "held_until": repr(owned.held_until)})
        pipe.execute()
        metrics.DEAD_LETTERS.inc()
        logger.error(
            "Generation %s: entry %s failed %s deliveries and is held for %ss in %s: replay or drop it (%s).",
            gid,
            entry_id,
            deliveries,
            hold_s,
            keys.DEAD_LETTERS,
            error,
            extra={"generation_id": gid},
        )

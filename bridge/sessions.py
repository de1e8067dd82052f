"""A session's stream as readers get it: each entry points at an event of one of its generations.

A generation's events are kept once, in its ``:out`` stream. The session stream (``keys.session_out``) only
records the order in which the events of its generations were committed: an entry ``n`` (the generation's
place in the session's list of generations), ``i`` (the event's ``:out`` id) and ``e`` (its name, unless
``token``). A reader of the session gets each event with its data and ``generation_id``, under the session
entry's id.

A generation whose events are no longer kept (its resume window passed while the session went on, or its
stream was trimmed) is told as a ``reset`` with its whole text, at the first entry of it that is read, and its
terminal event (kept with its record); its other events are not sent. A session entry written before entries
pointed at events holds the whole event, and is read as it is.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass

import orjson
import redis

from bridge import ends, keys
from bridge.events import TERMINAL_EVENTS, ClientEvent

# Sessions whose list of generations a resolver keeps (the newest used).
_CACHED_SESSIONS = 1024


@dataclass(frozen=True, slots=True)
class _Kept:
    """A generation's events that a read found: id -> (event, data), and its record when they are gone."""

    events: dict[str, tuple[str, str]]
    text: str | None = None
    end: str | None = None


class SessionResolver:
    """Turns a session stream's entries into the events they point at. One per process; safe for threads."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self._generations: OrderedDict[str, list[str]] = OrderedDict()
        self._lock = threading.Lock()

    def resolve(self, key: str, events: list[ClientEvent]) -> list[ClientEvent]:
        """``events`` read from the session stream ``key``, each as the event it points at (in one round trip for
        the events, and one more for the session's generations the first time they are needed)."""
        refs = [event.ref for event in events if event.ref is not None]
        if not refs:
            return events
        generations = self._generations_of(key, max(n for n, _ in refs))
        kept = self._read(generations, refs)
        resolved: list[ClientEvent] = []
        reset: set[str] = set()
        for event in events:
            if event.ref is None:
                resolved.append(event)
                continue
            n, entry_id = event.ref
            gid = generations[n] if n < len(generations) else ""
            found = kept.get(gid, _Kept({})).events.get(entry_id)
            if found is not None:
                resolved.append(ClientEvent(event.id, found[0], _tagged(found[1], gid)))
            elif gid:
                resolved += _gone(event, gid, kept.get(gid), reset)
        return resolved

    def _generations_of(self, key: str, highest: int) -> list[str]:
        """The session's generation ids in order, read again when ``highest`` is not known yet."""
        with self._lock:
            known = self._generations.get(key)
            if known is not None and highest < len(known):
                self._generations.move_to_end(key)
                return known
        session_key = keys.session_generations(keys.session_id_from_key(key))
        generations: list[str] = list(self.client.lrange(session_key, 0, -1))  # type: ignore[arg-type]
        with self._lock:
            self._generations[key] = generations
            self._generations.move_to_end(key)
            while len(self._generations) > _CACHED_SESSIONS:
                self._generations.popitem(last=False)
        return generations

    def _read(self, generations: list[str], refs: list[tuple[int, str]]) -> dict[str, _Kept]:
        """The events pointed at, per generation (one XRANGE each, in one pipeline); for a generation with some of
        them gone, its text and terminal event too (one more round trip, rare)."""
        spans: dict[str, tuple[str, str]] = {}
        for n, entry_id in refs:
            if n >= len(generations) or not generations[n]:
                continue
            gid = generations[n]
            low, high = spans.get(gid, (entry_id, entry_id))
            spans[gid] = (min(low, entry_id, key=_order), max(high, entry_id, key=_order))
        pipe = self.client.pipeline(transaction=False)
        for gid, (low, high) in spans.items():
            pipe.xrange(keys.gen_out(gid), min=low, max=high)
        kept: dict[str, _Kept] = {}
        for gid, entries in zip(spans, pipe.execute() if spans else [], strict=True):
            kept[gid] = _Kept({entry_id: (f.get("event", ""), f.get("data", "{}")) for entry_id, f in entries})
        wanted = {(generations[n], entry_id) for n, entry_id in refs if n < len(generations) and generations[n]}
        gone = sorted({gid for gid, entry_id in wanted if entry_id not in kept[gid].events})
        if gone:
            pipe = self.client.pipeline(transaction=False)
            for gid in gone:
                pipe.get(keys.gen_text(gid))
                pipe.get(keys.gen_end(gid))
                pipe.hmget(keys.gen_meta(gid), ends.FIELDS)
            records = pipe.execute()
            for index, gid in enumerate(gone):
                text, end, fields = records[3 * index : 3 * index + 3]
                kept[gid] = _Kept(kept[gid].events, text, ends.read(end, fields))
        return kept


def _gone(event: ClientEvent, gid: str, kept: _Kept | None, reset: set[str]) -> list[ClientEvent]:
    """What a reader gets for an entry whose event is no longer kept: a reset at the first one of its generation
    (then nothing for its other events), its terminal event at its terminal entry."""
    if kept is None or kept.end is None:
        return []  # the generation itself has expired
    name, _, rest = kept.end.partition(" ")
    data = rest.partition(" ")[2]
    out: list[ClientEvent] = []
    terminal = event.event in TERMINAL_EVENTS
    if gid not in reset:
        reset.add(gid)
        next_seq = int(orjson.loads(data).get("seq", 0))
        body = {"reason": "cursor_trimmed", "text": kept.text or "", "next_seq": next_seq}
        # At the terminal entry, the reset takes the id just before it (as a generation's reset does).
        reset_id = _previous(event.id) if terminal else event.id
        out.append(ClientEvent(reset_id, "reset", _tagged(orjson.dumps(body).decode(), gid)))
    if terminal:
        out.append(ClientEvent(event.id, name, _tagged(data, gid)))
    return out


def _previous(entry_id: str) -> str:
    ms, seq = _order(entry_id)
    return f"{ms}-{seq - 1}" if seq > 0 else f"{ms - 1}-{2**64 - 1}"


def _tagged(data: str, gid: str) -> str:
    """The event's JSON data with its ``generation_id``."""
    return data[:-1] + f',"generation_id":"{gid}"}}' if data != "{}" else f'{{"generation_id":"{gid}"}}'


def _order(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)

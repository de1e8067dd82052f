"""A generation's terminal event, kept with its record for readers that come after the resume window.

Readers after the window get a ``reset`` with the whole text, then the terminal event exactly as the earlier
readers got it (``'<event> <id> <data JSON>'``). Most answers end with a ``done`` whose data the record already
holds (``finish_reason``, the usage and the next ``seq`` in ``:meta``): such an end is kept as a ``:meta`` field
``end`` of its name and id only, a few bytes, instead of a key of its own (about 250 bytes with the key's
overhead, a quarter of what a finished answer may hold). Any other end (an error, a cancel, a ``done`` with more
data) keeps its line in ``keys.gen_end``. The committer checks, before it writes the short form, that it gives back
the line byte for byte, so a reader always gets the event as it was sent.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

# The ``:meta`` fields the short form is rebuilt from: a reader asks for these (HMGET) with the ``:end`` key.
FIELDS = ("end", "finish_reason", "prompt_tokens", "completion_tokens", "seq")


def short_form(line: str, meta: Mapping[str, Any]) -> str | None:
    """``'<event> <id>'`` when ``meta`` (the record's fields once the end is committed) gives back ``line``
    exactly; None when the line must be kept whole."""
    name, entry_id, _data = line.split(" ", 2)
    short = f"{name} {entry_id}"
    return short if rebuild(short, meta) == line else None


def rebuild(short: str, meta: Mapping[str, Any]) -> str | None:
    """The terminal event's line from its short form and the record's fields; None when they cannot give it."""
    name, _, entry_id = short.partition(" ")
    if name != "done" or not entry_id:
        return None
    try:
        usage = {"prompt_tokens": int(meta["prompt_tokens"]), "completion_tokens": int(meta["completion_tokens"])}
        data = {"finish_reason": str(meta["finish_reason"]), "usage": usage, "seq": int(meta["seq"]) - 1}
    except (KeyError, TypeError, ValueError):
        return None
    return f"{short} {orjson.dumps(data).decode()}"


def read(kept: str | None, fields: list[Any]) -> str | None:
    """The terminal event's line: the ``:end`` key's value (``kept``) when there is one, else the line rebuilt from
    the ``:meta`` values of ``FIELDS`` (in that order); None when the generation has not ended."""
    if kept:
        return str(kept)
    record = dict(zip(FIELDS, fields, strict=True))
    return rebuild(str(record["end"]), record) if record.get("end") else None

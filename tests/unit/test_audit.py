"""Audit records: one line each, on their own logger, kept whatever the log level, naming keys never showing them."""

from __future__ import annotations

import logging

import orjson

from app import audit
from app.auth import KeyEntry, key_changes
from bridge.logs import JsonFormatter


def _entry(name: str, key: str, **kw: object) -> KeyEntry:
    return KeyEntry.model_validate({"name": name, "key": key, **kw})


def test_a_reload_names_the_keys_added_removed_and_changed() -> None:
    before = [
        _entry("app", "app-key-0123456789"),
        _entry("old", "old-key-0123456789"),
        _entry("ops", "ops-0123456789ab"),
    ]
    after = [
        _entry("app", "app-key-rotated-0123"),
        _entry("new", "new-key-0123456789"),
        _entry("ops", "ops-0123456789ab"),
    ]
    assert key_changes(before, after) == {"added": ["new"], "removed": ["old"], "changed": ["app"]}


class _Kept(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_a_record_is_one_json_line_on_its_own_logger_even_when_the_log_level_is_higher() -> None:
    root, kept = logging.getLogger(), _Kept()
    level = root.level
    root.addHandler(kept)
    root.setLevel(logging.WARNING)  # LOG_LEVEL=WARNING
    try:
        audit.record("token.mint", "ok", actor="app", generation_id="gen_1", session_id=None, request_id="req_1")
    finally:
        root.setLevel(level)
        root.removeHandler(kept)
    [record] = [r for r in kept.records if r.name == "tokenbridge.audit"]
    line = orjson.loads(JsonFormatter().format(record))
    assert line["message"] == "token.mint by app on gen_1: ok"
    assert {k: line[k] for k in ("action", "outcome", "actor", "generation_id", "request_id")} == {
        "action": "token.mint",
        "outcome": "ok",
        "actor": "app",
        "generation_id": "gen_1",
        "request_id": "req_1",
    }
    assert "session_id" not in line

"""The terminal event kept with a generation's record: short when the record gives it back exactly, whole otherwise."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from bridge import ends

ID = "1796614979938-195"


def _line(name: str, data: dict[str, Any]) -> str:
    return f"{name} {ID} {orjson.dumps(data).decode()}"


def _record(**fields: Any) -> dict[str, Any]:
    return {"finish_reason": "length", "prompt_tokens": 2, "completion_tokens": 200, "seq": 201, **fields}


def test_a_plain_done_is_its_name_and_id_and_reads_back_byte_for_byte() -> None:
    line = _line(
        "done", {"finish_reason": "length", "usage": {"prompt_tokens": 2, "completion_tokens": 200}, "seq": 200}
    )
    short = ends.short_form(line, _record())
    assert short == f"done {ID}"
    # As Redis gives the record back: strings, in the order of ends.FIELDS
    fields = [short, "length", "2", "200", "201"]
    assert ends.read(None, fields) == line


@pytest.mark.parametrize(
    ("name", "data", "record"),
    [
        ("error", {"code": "provider_error", "message": "no", "seq": 200}, _record()),
        ("cancelled", {"seq": 200}, _record()),
        (
            "done",
            {
                "finish_reason": "stop",
                "usage": {"prompt_tokens": 2, "completion_tokens": 200},
                "cached": True,
                "seq": 200,
            },
            _record(finish_reason="stop"),
        ),
        (
            "done",
            {"finish_reason": "stop", "usage": {"completion_tokens": 200}, "seq": 200},
            _record(finish_reason="stop"),
        ),
        (
            "done",
            {"finish_reason": "stop", "usage": {"prompt_tokens": 2, "completion_tokens": 200}, "seq": 200},
            _record(),
        ),
        (
            "done",
            {"finish_reason": "stop", "usage": {"prompt_tokens": 2, "completion_tokens": 200}, "seq": 7},
            _record(finish_reason="stop"),
        ),
        (
            "done",
            {"finish_reason": "stop", "usage": {"prompt_tokens": 2, "completion_tokens": 200}, "seq": 200},
            {"seq": 201},
        ),
    ],
    ids=["error", "cancelled", "more-data", "less-usage", "other-reason", "other-seq", "no-record"],
)
def test_an_end_the_record_cannot_give_back_is_kept_whole(
    name: str, data: dict[str, Any], record: dict[str, Any]
) -> None:
    line = _line(name, data)
    assert ends.short_form(line, record) is None
    assert ends.read(line, [None] * len(ends.FIELDS)) == line


def test_no_end_yet_reads_as_none() -> None:
    assert ends.read(None, [None, None, "3", None, "4"]) is None
    assert ends.read("", [None] * len(ends.FIELDS)) is None

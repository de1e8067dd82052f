from __future__ import annotations

import pytest

from bridge.streams import id_after, parse_stream_id, previous_id


@pytest.mark.parametrize(
    ("value", "parsed"),
    [
        ("1700000000000-3", (1700000000000, 3)),
        ("5", (5, 0)),
        ("0-0", (0, 0)),
        ("abc", None),
        ("1-x", None),
        ("-1", None),
    ],
)
def test_stream_ids_are_parsed_strictly(value: str, parsed: tuple[int, int] | None) -> None:
    assert parse_stream_id(value) == parsed


def test_previous_id_is_the_greatest_id_before() -> None:
    assert previous_id("10-5") == "10-4"
    assert previous_id("10-0") == f"9-{2**64 - 1}"
    assert id_after("10-0", previous_id("10-0"))
    assert id_after(previous_id("10-0"), "9-99")


def test_ids_compare_numerically_not_as_text() -> None:
    assert id_after("10-0", "9-0")
    assert id_after("5-10", "5-9")
    assert not id_after("5-9", "5-9")

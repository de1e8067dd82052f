"""Durable Streams offsets and cursors (app.durable_streams): pure functions of ids and time."""

from __future__ import annotations

from app.durable_streams import CURSOR_EPOCH_S, CURSOR_INTERVAL_S, id_of, next_cursor, offset_of


def test_offsets_sort_as_stream_ids_do_and_turn_back_into_them() -> None:
    ids = ["0-0", "1700000000000-0", "1700000000000-9", "1700000000000-10", "1700000000001-0", f"1-{2**64 - 1}"]
    offsets = [offset_of(entry_id) for entry_id in ids]
    assert [id_of(offset) for offset in offsets] == ids
    by_id = sorted(ids, key=lambda i: tuple(map(int, i.split("-"))))
    assert sorted(offsets) == [offset_of(entry_id) for entry_id in by_id]
    assert all(not set(offset) & set(",&=?/") and offset not in ("-1", "now") for offset in offsets)


def test_only_offsets_of_this_shape_are_ids() -> None:
    for bad in ("", "-1", "now", "1700000000000-1", "12_", "_3", "0001700000000000_0000000000000000001x", "1_2_3"):
        assert id_of(bad) is None
    # Fewer digits name the same id: the protocol's own examples write the start as 16 + 16 zeros
    assert id_of("0000000000000000_0000000000000000") == "0-0" and id_of("12_3") == "12-3"


def test_a_cursor_is_the_interval_unless_the_client_is_not_behind_it() -> None:
    now = CURSOR_EPOCH_S + 1000 * CURSOR_INTERVAL_S + 5
    assert next_cursor(None, now) == "1000"
    assert next_cursor("999", now) == "1000"
    assert next_cursor("not a number", now) == "1000"
    for echoed in ("1000", "1500"):
        assert int(next_cursor(echoed, now)) > int(echoed)

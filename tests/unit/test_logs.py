from __future__ import annotations

import logging

import orjson
import pytest

from bridge.logs import JsonFormatter, configure_logging


def test_json_lines_carry_the_message_and_every_extra_field() -> None:
    record = logging.LogRecord("workers.consumer", logging.INFO, __file__, 1, "Generation %s done.", ("gen_1",), None)
    record.generation_id = "gen_1"
    record.attempt = 2
    line = orjson.loads(JsonFormatter().format(record))
    assert line["message"] == "Generation gen_1 done."
    assert (line["level"], line["logger"], line["generation_id"], line["attempt"]) == (
        "info",
        "workers.consumer",
        "gen_1",
        2,
    )
    assert line["ts"].endswith("Z")


def test_exceptions_are_kept_in_one_line() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed", (), __import__("sys").exc_info())
    text = JsonFormatter().format(record)
    assert "\n" not in text
    assert "ValueError: boom" in orjson.loads(text)["exc_info"]


def test_configure_logging_installs_one_handler(capsys: pytest.CaptureFixture[str]) -> None:
    root = logging.getLogger()
    saved = root.handlers[:], root.level, logging.getLogRecordFactory()
    try:
        configure_logging("json", "INFO", process="consumer")
        configure_logging("json", "INFO", process="consumer")
        assert len(root.handlers) == 1
        logging.getLogger("t").info("hello")
        line = orjson.loads(capsys.readouterr().err.strip().splitlines()[-1])
        assert line["message"] == "hello" and line["process_type"] == "consumer"
    finally:
        root.handlers[:], level, factory = saved[0], saved[1], saved[2]
        root.setLevel(level)
        logging.setLogRecordFactory(factory)

"""Log lines: values from the wire are escaped, so they cannot forge lines or terminal codes."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from relay.core.logs import clean, event, formatter, observe


@pytest.mark.parametrize(
    ("raw", "logged"),
    [
        ("plain@example.org", "plain@example.org"),
        ("evil\r\nFAKE accepted id=1", "evil\\x0d\\x0aFAKE accepted id=1"),
        ("\x1b[31mred", "\\x1b[31mred"),
        ("back\\slash", "back\\\\slash"),
        ("nul\x00", "nul\\x00"),
        ("\x85next-line", "\\x85next-line"),
    ],
)
def test_control_characters_are_escaped(raw: str, logged: str) -> None:
    assert clean(raw) == logged


def test_long_values_are_cut() -> None:
    assert clean("a" * 500, limit=10) == "a" * 10 + "..."


def test_event_writes_one_line_per_step(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="relay.test"):
        event(logging.getLogger("relay.test"), "rejected", mail_from="x\r\ny", code="550 5.7.1")
    (record,) = caplog.records
    message = record.getMessage()
    assert "\n" not in message and "\r" not in message
    assert message == "rejected mail_from=x\\x0d\\x0ay code=550 5.7.1"


def _json_lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


@pytest.fixture
def json_log() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    logger = logging.getLogger("relay.test.json")
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter("json"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        yield logger, stream
    finally:
        logger.removeHandler(handler)
        logger.propagate = True
        logger.setLevel(logging.NOTSET)


def test_json_lines_carry_the_step_and_its_fields_as_keys(
    json_log: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, stream = json_log
    event(logger, "rejected", mail_from="x\r\ny", code="550 5.7.1", size=1234, held=False)
    event(logger, "listening", level=logging.WARNING, host="127.0.0.1", port=25)
    text = stream.getvalue()
    assert text.count("\n") == 2  # one object per line, whatever the fields held
    first, second = _json_lines(stream)
    assert first == {
        "time": first["time"],
        "level": "INFO",
        "logger": "relay.test.json",
        "step": "rejected",
        "mail_from": "x\\x0d\\x0ay",  # escaped as in text lines, not only JSON-quoted
        "code": "550 5.7.1",
        "size": 1234,
        "held": False,
    }
    moment = datetime.fromisoformat(str(first["time"]))
    assert moment.utcoffset() == timedelta(0)
    assert str(first["time"]).endswith("+00:00")
    assert abs(datetime.now(UTC) - moment) < timedelta(minutes=5)
    assert (second["level"], second["step"], second["port"]) == ("WARNING", "listening", 25)


def test_json_lines_of_plain_records_and_tracebacks(
    json_log: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, stream = json_log
    logger.info("list key %s", "ABCD")
    try:
        empty: dict[str, int] = {}
        empty["missing"]
    except KeyError:
        logger.exception("internal error in %s", "schedule")
    plain, failed = _json_lines(stream)
    assert plain["message"] == "list key ABCD" and "step" not in plain
    assert failed["level"] == "ERROR"
    assert failed["message"] == "internal error in schedule"
    assert "Traceback" in str(failed["traceback"]) and "KeyError" in str(failed["traceback"])


def test_a_field_named_like_a_key_of_the_line_keeps_both(
    json_log: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, stream = json_log
    event(logger, "odd", time="noon")
    (line,) = _json_lines(stream)
    assert line["time"] != "noon" and line["field.time"] == "noon"


def test_observers_see_every_event_whatever_the_level() -> None:
    seen: list[tuple[str, dict[str, object]]] = []
    stop = observe(lambda step, fields: seen.append((step, dict(fields))))
    quiet = logging.getLogger("relay.test.quiet")
    quiet.setLevel(logging.ERROR)
    try:
        event(quiet, "accepted", id="m1")
        stop()
        event(quiet, "accepted", id="m2")
    finally:
        quiet.setLevel(logging.NOTSET)
    assert seen == [("accepted", {"id": "m1"})]

"""Log lines: values from the wire are escaped, so they cannot forge lines or terminal codes."""

from __future__ import annotations

import logging

import pytest

from relay.core.logs import clean, event


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

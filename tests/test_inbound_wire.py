"""Bare CR and bare LF are refused before anything parses the message."""

from __future__ import annotations

import pickle
from contextlib import contextmanager

import pytest

from relay.inbound import Rejection, check_wire

GOOD = b"From: alice@example.net\r\nSubject: hi\r\n\r\nline one\r\nline two\r\n"


def test_crlf_only_message_passes() -> None:
    check_wire(GOOD)
    check_wire(b"")


@pytest.mark.parametrize(
    "raw",
    [
        GOOD.replace(b"line one\r\n", b"line one\n"),  # bare LF
        GOOD.replace(b"line one\r\n", b"line one\r"),  # bare CR
        GOOD + b"\n.\r\nMAIL FROM:<x@evil.example>\r\n",  # the classic smuggling dot
        GOOD + b"\r\n.\r\r\n",  # CR before a CRLF
        b"Subject: x\n\nbody",  # LF-only file
    ],
    ids=["bare-lf", "bare-cr", "lf-dot-crlf", "cr-crlf", "lf-file"],
)
def test_bare_cr_or_lf_is_rejected(raw: bytes) -> None:
    with pytest.raises(Rejection) as caught:
        check_wire(raw)
    assert caught.value.reply.startswith("550 5.5.2 ")
    assert "bare CR or LF" in caught.value.reply


def test_reply_is_one_printable_ascii_line() -> None:
    rejection = Rejection(550, "5.7.1", "bad \r\nRCPT TO:<x> caf\u00e9 \x00")
    assert rejection.reply == "550 5.7.1 bad \\r\\nRCPT TO:<x> caf\\xe9 \\x00"
    assert str(rejection) == rejection.reply
    assert len(Rejection(550, "5.7.1", "x" * 5000).reply) < 512


def test_rejection_survives_context_managers_and_pickling() -> None:
    @contextmanager
    def scope():
        yield

    with pytest.raises(Rejection) as caught, scope():
        raise Rejection(554, "5.6.0", "why")
    assert (caught.value.code, caught.value.status, caught.value.text) == (554, "5.6.0", "why")
    assert pickle.loads(pickle.dumps(caught.value)).reply == "554 5.6.0 why"

"""Strict MIME parsing: defects that change how a post is split or decoded are refused."""

from __future__ import annotations

import sys
import traceback
from collections.abc import Iterator
from email import policy
from email.message import EmailMessage

import pytest

from relay.inbound import Rejection, check_structure, prescan
from relay.inbound.structure import MAX_DEPTH

HEAD = b"From: alice@example.net\r\nTo: list@example.org\r\nSubject: t\r\nMIME-Version: 1.0\r\n"


def rejected(raw: bytes) -> str:
    with pytest.raises(Rejection) as caught:
        check_structure(raw)
    assert caught.value.reply.startswith("554 5.6.0 "), caught.value.reply
    return caught.value.text


def leaf(cte: str, body: bytes) -> bytes:
    return (
        HEAD
        + b"Content-Type: text/plain\r\nContent-Transfer-Encoding: "
        + cte.encode()
        + (b"\r\n\r\n" + body)
    )


def nested_multipart(depth: int) -> bytes:
    """`depth` multipart levels, one inside the other, around a text leaf."""
    opening = b"".join(
        b'Content-Type: multipart/mixed; boundary="b%d"\r\n\r\n--b%d\r\n' % (i, i)
        for i in range(depth)
    )
    closing = b"".join(b"\r\n--b%d--\r\n" % i for i in reversed(range(depth)))
    return HEAD + opening + b"Content-Type: text/plain\r\n\r\nhello" + closing


def nested_messages(depth: int) -> bytes:
    return HEAD + b"Content-Type: message/rfc822\r\n\r\n" * depth + b"Subject: in\r\n\r\nhi\r\n"


def test_ordinary_mail_passes() -> None:
    msg = EmailMessage(policy=policy.SMTP)
    msg["From"] = "Ærøskøbing Sécurité <alice@example.net>"
    msg["To"] = "list@example.org"
    msg["Subject"] = "Grüße: " + "a rather long subject line that has to be folded " * 3
    msg.set_content("Hallo Welt, schöne Grüße.\n" + "x" * 200 + "\n")
    msg.add_alternative("<p>Hallo</p>", subtype="html")
    msg.add_attachment(bytes(range(256)) * 20, "application", "octet-stream", filename="a.bin")
    inner = EmailMessage(policy=policy.SMTP)
    inner["Subject"] = "forwarded"
    inner.set_content("forwarded body\n")
    msg.add_attachment(inner)

    parsed = check_structure(msg.as_bytes())

    assert parsed["subject"].startswith("Grüße: a rather long subject")
    assert [p.get_content_type() for p in parsed.iter_parts()] == [
        "multipart/alternative",
        "application/octet-stream",
        "message/rfc822",
    ]


def test_nesting_to_the_limit_passes_and_one_more_is_rejected() -> None:
    check_structure(nested_multipart(MAX_DEPTH))
    assert "nesting deeper than 20" in rejected(nested_multipart(MAX_DEPTH + 1))


def test_message_rfc822_levels_count_as_nesting() -> None:
    check_structure(nested_messages(MAX_DEPTH - 1))  # plus the top-level message/rfc822 itself
    assert "nesting" in rejected(nested_messages(MAX_DEPTH + 1))


@pytest.mark.parametrize("build", [nested_multipart, nested_messages])
def test_ten_thousand_levels_are_rejected_without_recursing(build) -> None:
    # The bound is the pre-scan's now, in one pass before any parse: it counts nesting
    # levels and delimiter lines, where check_structure counted Content-Type lines.
    with pytest.raises(Rejection) as caught:
        prescan(build(10_000))
    assert caught.value.reply == "554 5.6.0 malformed message: MIME nesting deeper than 20 levels"


@pytest.fixture
def shallow_stack() -> Iterator[None]:
    """Make the interpreter's recursion limit reachable by a nesting the part cap allows."""
    saved = sys.getrecursionlimit()
    sys.setrecursionlimit(len(traceback.extract_stack()) + 120)
    yield
    sys.setrecursionlimit(saved)


def test_parser_recursion_is_caught_not_raised(shallow_stack: None) -> None:
    with pytest.raises(Rejection) as caught:
        check_structure(nested_messages(200))
    assert caught.value.reply.startswith("554 5.6.0 ")
    assert isinstance(caught.value.__context__, RecursionError)


def test_header_that_recurses_the_header_parser_is_rejected() -> None:
    raw = b"From: " + b"(" * 5000 + b")" * 5000 + b" <a@example.net>\r\n\r\nhi\r\n"
    assert "cannot be parsed" in rejected(raw)


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        (HEAD + b"Content-Type: multipart/mixed\r\n\r\n--x\r\n\r\nhi\r\n--x--\r\n", "boundary"),
        (
            HEAD + b"Content-Type: multipart/mixed; boundary=x\r\n\r\n--y\r\n\r\nhi\r\n--y--\r\n",
            "never found",
        ),
        (HEAD + b"Content-Type: multipart/mixed; boundary=x\r\n\r\n--x\r\n\r\nhi\r\n", "close"),
        (
            # parsed here with boundary "----", by most clients with "----=_Part_1.2"
            HEAD + b"Content-Type: multipart/mixed; boundary=----=_Part_1.2\r\n\r\n"
            b"------\r\n\r\none reading\r\n--------\r\n"
            b"------=_Part_1.2\r\n\r\nanother\r\n------=_Part_1.2--\r\n",
            "invalid Content-Type",
        ),
        (
            HEAD + b"Content-Type: multipart/mixed; boundary=x\r\n"
            b"Content-Transfer-Encoding: base64\r\n\r\n--x\r\n\r\nhi\r\n--x--\r\n",
            "transfer encoding",
        ),
    ],
    ids=["no-boundary", "boundary-not-found", "no-close-delimiter", "unquoted-equals", "mp-b64"],
)
def test_broken_multipart_is_rejected(raw: bytes, why: str) -> None:
    assert why in rejected(raw)


@pytest.mark.parametrize(
    "body",
    [
        b"aGVsbG8*d29ybGQ=\r\n",
        b"aGVsbG8\r\n",
        b"aGVsbG8==\r\n",
        b"aGVsbG8=aGk=\r\n",
        b"\xff\xfe\r\n",
    ],
    ids=["bad-char", "no-padding", "excess-padding", "data-after-padding", "8bit"],
)
def test_bad_base64_is_rejected(body: bytes) -> None:
    assert "invalid base64" in rejected(leaf("base64", body))


def test_good_base64_with_line_breaks_passes() -> None:
    check_structure(leaf("base64", b"aGVsbG8g\r\nd29ybGQ=\r\n"))


@pytest.mark.parametrize(
    "body",
    [b"price =E2=82=AC5 =G1\r\n", b"a = b\r\n", b"ends with =4"],
    ids=["non-hex", "lone-equals", "truncated"],
)
def test_bad_quoted_printable_is_rejected(body: bytes) -> None:
    assert "invalid quoted-printable" in rejected(leaf("quoted-printable", body))


def test_good_quoted_printable_passes() -> None:
    body = b"Gr=C3=BC=c3=9Fe, a soft=\r\nbreak, padded soft break= \t\r\nand the end=\r\n"
    check_structure(leaf("quoted-printable", body))


@pytest.mark.parametrize("cte", ["x-uuencode", "base65", "quoted printable"])
def test_unknown_transfer_encoding_is_rejected(cte: str) -> None:
    assert "unknown Content-Transfer-Encoding" in rejected(leaf(cte, b"hi\r\n"))


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        (HEAD + b"Content-Type: text/plain\r\nContent-Type: text/html\r\n\r\nhi\r\n", "more than"),
        (HEAD + b"not a field\r\nContent-Type: text/html\r\n\r\nhi\r\n", "not a field"),
        (b" Subject: folded first\r\n\r\nhi\r\n", "continuation"),
    ],
    ids=["two-content-types", "missing-separator", "continuation-first"],
)
def test_ambiguous_header_section_is_rejected(raw: bytes, why: str) -> None:
    assert why in rejected(raw)

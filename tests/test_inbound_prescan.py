"""The pre-scan: its bounds, its agreement with the strict parse, and pieces of any size."""

from __future__ import annotations

import pytest

from relay.inbound import Prescan, Rejection, check_structure, prescan
from relay.inbound.mime_fields import MAX_PARAMETERS
from relay.inbound.prescan import MAX_FIELDS, MAX_PARTS, Shape
from tests.test_inbound_structure import HEAD, leaf, nested_messages, nested_multipart


def multipart(parts: list[bytes], boundary: bytes = b"b", media: bytes = b"mixed") -> bytes:
    head = HEAD + b"Content-Type: multipart/" + media + b'; boundary="' + boundary + b'"\r\n\r\n'
    body = b"".join(b"--" + boundary + b"\r\n" + part + b"\r\n" for part in parts)
    return head + body + b"--" + boundary + b"--\r\n"


def refused(raw: bytes) -> str:
    with pytest.raises(Rejection) as caught:
        prescan(raw)
    assert caught.value.reply.startswith("554 5.6.0 malformed message: "), caught.value.reply
    return caught.value.text


def in_pieces(raw: bytes, size: int) -> Shape | str:
    scan = Prescan()
    try:
        for start in range(0, len(raw), size):
            scan.feed(raw[start : start + size])
        return scan.close()
    except Rejection as rejection:
        return rejection.reply


def test_parts_are_counted_by_delimiter_lines_not_content_type_lines() -> None:
    typeless = b"\r\nno Content-Type here"
    assert prescan(multipart([typeless] * (MAX_PARTS - 1))).parts == MAX_PARTS
    assert f"more than {MAX_PARTS} MIME parts" in refused(multipart([typeless] * MAX_PARTS))
    assert f"more than {MAX_PARTS} MIME parts" in refused(multipart([b""] * 100_000))


def test_encapsulated_messages_count_as_parts_and_levels() -> None:
    shape = prescan(nested_messages(5))
    assert (shape.parts, shape.depth) == (6, 5)
    assert "nesting deeper than 20" in refused(nested_messages(21))
    assert "nesting deeper than 20" in refused(nested_multipart(10_000))


def test_a_line_that_begins_with_the_boundary_must_be_a_delimiter() -> None:
    assert prescan(multipart([b"\r\n--bx is text to the parser"], boundary=b"bb")).parts == 2
    why = refused(multipart([b"\r\n--bx is text to the parser, a delimiter to RFC 2046"]))
    assert "begins with a multipart boundary but is not a delimiter" in why
    # Transport padding after a delimiter is allowed, as by the parser.
    assert prescan(multipart([b"\r\nhi"]).replace(b"--b\r\n", b"--b \t\r\n")).parts == 2


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        (HEAD + b"Content-Type: text/plain (a comment)\r\n\r\nhi\r\n", "plain form"),
        (
            HEAD + b"Content-Type: text/plain" + b"; a=b" * (MAX_PARAMETERS + 1) + b"\r\n\r\nhi",
            "plain form",
        ),
        (
            HEAD
            + b'Content-Type: text/plain; x="'
            + b"y" * 500
            + b"\r\n "
            + b"y" * 500
            + b'"\r\n\r\n',
            "plain form",
        ),
        (HEAD + b"Content-Type:\r\n\r\nhi\r\n", "plain form"),
        (leaf("quoted printable", b"hi\r\n"), "unknown Content-Transfer-Encoding"),
        (b"".join(b"X-%d: v\r\n" % n for n in range(MAX_FIELDS + 1)) + b"\r\nhi", "header fields"),
        (b"X-Long: " + b"a\r\n " * 3000 + b"\r\n\r\nhi", "header field longer"),
        (b"Subject: x\r\n\r\n" + b"a" * 999 + b"\r\n", "line longer than 998"),
        (b"Subject: x\r\n\r\n" + b"a" * 999, "line longer than 998"),
    ],
    ids=[
        "comment",
        "parameters",
        "long-value",
        "empty",
        "two-word-cte",
        "fields",
        "long-field",
        "long-line",
        "long-last-line",
    ],
)
def test_header_and_line_bounds(raw: bytes, why: str) -> None:
    assert why in refused(raw)


def test_plain_forms_pass() -> None:
    folded = (
        HEAD + b"Content-Type: multipart/signed; micalg=pgp-sha512;\r\n"
        b' protocol="application/pgp-signature";\r\n\tboundary="sig-\\"1\\""; \r\n\r\n'
        b'--sig-"1"\r\nContent-Type: text/plain; charset=utf-8; format=flowed\r\n'
        b"Content-Transfer-Encoding: Quoted-Printable \r\n\r\nhi\r\n"
        b'--sig-"1"\r\nContent-Type: application/pgp-signature; name="signature.asc"\r\n\r\n'
        b'sig\r\n--sig-"1"--\r\n'
    )
    shape = prescan(folded)
    assert (shape.top_type, shape.top_boundary, shape.parts) == ("multipart/signed", 'sig-"1"', 3)
    assert shape.types == {"multipart/signed", "text/plain", "application/pgp-signature"}
    assert check_structure(folded).get_boundary() == 'sig-"1"'


@pytest.mark.parametrize(
    "raw",
    [
        HEAD + b"Content-Type: multipart/mixed\r\n\r\n--x\r\n\r\nhi\r\n--x--\r\n",
        HEAD + b"Content-Type: multipart/mixed; boundary=x\r\n\r\n--y\r\n\r\nhi\r\n--y--\r\n",
        HEAD + b"Content-Type: multipart/mixed; boundary=x\r\n\r\n--x\r\n\r\nhi\r\n",
        HEAD + b"Content-Type: multipart/mixed; boundary=x\r\n\r\n--x--\r\n",
        HEAD + b"Content-Type: text/plain\r\nContent-Type: text/html\r\n\r\nhi\r\n",
        HEAD + b"not a field\r\nContent-Type: text/html\r\n\r\nhi\r\n",
        b" Subject: folded first\r\n\r\nhi\r\n",
        nested_multipart(21),
        nested_messages(21),
        multipart([b'Content-Type: multipart/alternative; boundary="c"\r\n\r\n--c\r\n\r\nx']),
        multipart([b'Content-Type: multipart/alternative; boundary="c"\r\n\r\nno delimiter']),
    ],
)
def test_faults_it_sees_are_refused_in_the_strict_parse_s_words(raw: bytes) -> None:
    with pytest.raises(Rejection) as strict:
        check_structure(raw)
    assert refused(raw) == strict.value.text


@pytest.mark.parametrize(
    "raw",
    [
        multipart([b"Content-Type: text/plain\r\n\r\nhello", b"\r\n"] * 3),
        multipart([b"\r\n"] * 300),
        nested_multipart(21),
        nested_messages(3) + b"\r\n",
        multipart([b"\r\n--bx"]),
        leaf("base64", b"aGVsbG8g\r\nd29ybGQ=\r\n"),
        b"X-Long: " + b"a" * 990 + b"\r\n\r\n" + b"b" * 998 + b"\r\n" + b"c" * 999 + b"\r\n",
        multipart(
            [b"Content-Type: message/delivery-status\r\n\r\nA: 1\r\n\r\nB: 2\r\nC: 3\r\n"],
            media=b"report",
        ),
    ],
)
@pytest.mark.parametrize("size", [1, 2, 3, 5, 64, 1000])
def test_pieces_of_any_size_give_the_same_answer(raw: bytes, size: int) -> None:
    try:
        whole: Shape | str = prescan(raw)
    except Rejection as rejection:
        whole = rejection.reply
    assert in_pieces(raw, size) == whole

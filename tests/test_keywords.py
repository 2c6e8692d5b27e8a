"""Keywords of a signed post: header and body-line forms, encodings, multipart, conflicts."""

from __future__ import annotations

import base64
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from typing import cast

import pytest

from relay.inbound.keywords import KeywordError, extract

ATTACHMENT = b"--- a/x.go\n+++ b/x.go\n@@ -1 +1 @@\n-bad\n+good\n"


def entity(text: str, *, cte: str = "quoted-printable", charset: str = "utf-8", **fields: str):
    part = EmailMessage(policy=policy.SMTP)
    for name, value in fields.items():
        part[name.replace("_", "-")] = value
    part.set_content(text, charset=charset, cte=cte)
    del part["MIME-Version"]
    return part


def parse(payload: bytes) -> EmailMessage:
    return cast(EmailMessage, BytesParser(policy=policy.default).parsebytes(payload))


def body_text(payload: bytes) -> str:
    message = parse(payload)
    part = message.get_body(("plain",))
    assert part is not None
    return part.get_content().replace("\r\n", "\n")


def test_body_lines_are_read_and_stripped_with_the_blank_line_after_them():
    payload = entity(
        "X-Advisory: CVE-2026-1234\nx-embargo-until:  2026-12-01 15:00 Europe/Berlin \n\n"
        "Details follow.\nX-Advisory: not a keyword down here\n"
    ).as_bytes()
    keywords, stripped = extract(payload)
    assert keywords == {
        "X-Advisory": "CVE-2026-1234",
        "X-Embargo-Until": "2026-12-01 15:00 Europe/Berlin",
    }
    assert body_text(stripped) == "Details follow.\nX-Advisory: not a keyword down here\n"
    assert b"\r\n" in stripped and b"\n" not in stripped.replace(b"\r\n", b"")


def test_header_fields_of_the_signed_entity_are_read_and_removed():
    payload = entity(
        "Details.\n",
        Subject="[EMBARGOED] CVE-2026-1234",
        X_Advisory="CVE-2026-1234",
        X_Embargo_Until="2026-12-01T16:00Z",
    ).as_bytes()
    keywords, stripped = extract(payload)
    assert keywords == {"X-Advisory": "CVE-2026-1234", "X-Embargo-Until": "2026-12-01T16:00Z"}
    message = parse(stripped)
    assert "X-Advisory" not in message and "X-Embargo-Until" not in message
    assert message["Subject"] == "[EMBARGOED] CVE-2026-1234"
    # Everything that is not a keyword is kept byte for byte.
    assert stripped == payload.replace(b"X-Advisory: CVE-2026-1234\r\n", b"").replace(
        b"X-Embargo-Until: 2026-12-01T16:00Z\r\n", b""
    )


def test_folded_header_and_body_lines_together():
    payload = (
        b"Content-Type: text/plain; charset=us-ascii\r\n"
        b"X-Advisory:\r\n CVE-2026-1234\r\n"
        b"\r\n"
        b"X-Status: draft\r\nText.\r\n"
    )
    keywords, stripped = extract(payload)
    assert keywords == {"X-Advisory": "CVE-2026-1234", "X-Status": "draft"}
    # No blank line after the keyword lines: the text right after them stays.
    assert stripped == b"Content-Type: text/plain; charset=us-ascii\r\n\r\nText.\r\n"


def test_a_keyword_given_twice_is_refused_naming_both_lines():
    payload = entity("X-Advisory: CVE-2026-2222\n\nText\n", X_Advisory="CVE-2026-1111").as_bytes()
    with pytest.raises(KeywordError, match="X-Advisory is given more than once"):
        extract(payload)
    twice = entity("X-Embargo-Until: +7d\nX-Embargo-Until: +8d\n\nText\n").as_bytes()
    with pytest.raises(KeywordError, match="'X-Embargo-Until: \\+7d' and 'X-Embargo-Until: \\+8d'"):
        extract(twice)
    # The same value twice is refused too: a repeated line is a spliced line.
    same = entity("X-Embargo-Until: +7d\nX-embargo-until: +7d\n\nText\n").as_bytes()
    with pytest.raises(KeywordError, match="more than once"):
        extract(same)
    header_and_body = (
        b"Content-Type: text/plain; charset=us-ascii\r\nX-Advisory: CVE-2026-1\r\n\r\n"
        b"X-Advisory: CVE-2026-1\r\n\r\nText.\r\n"
    )
    with pytest.raises(KeywordError, match="X-Advisory is given more than once"):
        extract(header_and_body)


def test_conflicting_lines_are_refused():
    both = entity("X-Embargo-Until: +7d\nX-Lift: now\n\nText\n").as_bytes()
    with pytest.raises(KeywordError, match="contradict"):
        extract(both)


def test_no_keywords_leaves_the_payload_unchanged():
    payload = entity("Hello list,\n\nX-Advisory: quoted later, not a keyword\n").as_bytes()
    assert extract(payload) == ({}, payload)
    unknown = entity("X-Mailer-Note: something\nX-Advisory: CVE-2026-1\n").as_bytes()
    assert extract(unknown) == ({}, unknown)


def test_quoted_printable_with_soft_breaks_and_non_ascii_text():
    text = (
        "X-Advisory: K8S-2026-0001\n"
        "X-Embargo-Until: 2026-12-01 16:00 UTC\n"
        "\n"
        "Grüße: " + "a very long line " * 8 + "\n"
    )
    payload = entity(text, cte="quoted-printable").as_bytes()
    keywords, stripped = extract(payload)
    assert keywords == {"X-Advisory": "K8S-2026-0001", "X-Embargo-Until": "2026-12-01 16:00 UTC"}
    assert body_text(stripped) == "Grüße: " + "a very long line " * 8 + "\n"
    # The remaining encoded lines are the original ones, not a re-encoding.
    assert payload.endswith(stripped.partition(b"\r\n\r\n")[2])


def test_quoted_printable_keyword_split_by_a_soft_line_break():
    payload = (
        b"Content-Type: text/plain; charset=utf-8\r\n"
        b"Content-Transfer-Encoding: quoted-printable\r\n\r\n"
        b"X-Advi=\r\nsory: CVE-2026-=3D1\r\n\r\nBody\r\n"
    )
    keywords, stripped = extract(payload)
    assert keywords == {"X-Advisory": "CVE-2026-=1"}
    assert stripped.endswith(b"\r\n\r\nBody\r\n")


def test_base64_body_is_re_encoded_without_the_keyword_lines():
    payload = entity(
        "X-Advisory: CVE-2026-1234\n\nÜber alles: details.\n", cte="base64", charset="utf-8"
    ).as_bytes()
    keywords, stripped = extract(payload)
    assert keywords == {"X-Advisory": "CVE-2026-1234"}
    assert body_text(stripped) == "Über alles: details.\n"
    body = stripped.partition(b"\r\n\r\n")[2]
    assert all(len(line) <= 76 for line in body.split(b"\r\n"))
    assert "Content-Transfer-Encoding: base64" in stripped.decode()


def test_latin1_body_keeps_its_charset():
    payload = entity("X-Advisory: CVE-2026-7\n\nCafé\n", cte="8bit", charset="iso-8859-1")
    raw = payload.as_bytes()
    assert "Café".encode("iso-8859-1") in raw
    keywords, stripped = extract(raw)
    assert keywords == {"X-Advisory": "CVE-2026-7"}
    assert body_text(stripped) == "Café\n"


def test_multipart_first_text_part_only_and_other_parts_byte_identical():
    root = EmailMessage(policy=policy.SMTP)
    root["X-Embargo-Until"] = "2026-12-01T16:00Z"
    root.set_content("X-Advisory: CVE-2026-1234\n\nPatch attached.\n", cte="quoted-printable")
    root.add_attachment(
        ATTACHMENT, maintype="text", subtype="x-diff", filename="CVE-2026-1234_v1.30.patch"
    )
    # A second text part: its keyword-like lines are content, not keywords.
    root.add_attachment("X-Advisory: CVE-2099-0\n", filename="note.txt")
    del root["MIME-Version"]
    payload = root.as_bytes()
    keywords, stripped = extract(payload)
    assert keywords == {"X-Advisory": "CVE-2026-1234", "X-Embargo-Until": "2026-12-01T16:00Z"}
    message = parse(stripped)
    first, patch, note = message.iter_parts()
    assert first.get_content() == "Patch attached.\r\n"
    assert patch.get_payload(decode=True) == ATTACHMENT
    assert note.get_content() == "X-Advisory: CVE-2099-0\r\n"
    tail = payload[payload.index(b"Patch attached.") :]
    assert stripped.endswith(tail)


def test_nested_multipart_alternative_is_searched():
    inner = EmailMessage(policy=policy.SMTP)
    inner.set_content("X-Advisory: GHSA-abcd-1234-wxyz\n\nPlain text.\n")
    inner.add_alternative("<p>HTML text.</p>", subtype="html")
    outer = EmailMessage(policy=policy.SMTP)
    outer.make_mixed()
    outer.attach(inner)
    outer.add_attachment(base64.b64decode("AAEC"), maintype="application", subtype="octet-stream")
    del outer["MIME-Version"]
    keywords, stripped = extract(outer.as_bytes())
    assert keywords == {"X-Advisory": "GHSA-abcd-1234-wxyz"}
    assert body_text(stripped) == "Plain text.\n"


def test_an_attached_text_file_is_not_read_for_keywords():
    root = EmailMessage(policy=policy.SMTP)
    root.make_mixed()
    root.add_attachment("X-Advisory: CVE-2026-9\n", filename="keywords.txt")
    del root["MIME-Version"]
    payload = root.as_bytes()
    assert extract(payload) == ({}, payload)


def test_a_keyword_without_a_value_is_refused():
    with pytest.raises(KeywordError, match="has no value"):
        extract(entity("X-Advisory:\n\nText\n").as_bytes())


def test_payload_without_header_fields():
    keywords, stripped = extract(b"\r\nX-Advisory: CVE-2026-5\r\n\r\nText\r\n")
    assert keywords == {"X-Advisory": "CVE-2026-5"}
    assert stripped == b"\r\nText\r\n"

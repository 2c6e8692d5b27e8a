"""Outgoing copies, checked the way a member's mail client and an eavesdropper see them.

Real gpg throughout: the relay's own GnuPG home holds the list key; each member
decrypts in a separate home holding only their own secret key and the list's
public key. The numbered checks are those of message-format.md §6.
"""

from __future__ import annotations

import base64
import quopri
import re
from datetime import UTC, datetime
from email import message_from_bytes, policy
from email.header import Header
from email.message import EmailMessage
from pathlib import Path

import pytest

from relay.compose import (
    OBSCURED_SUBJECT,
    Copy,
    build_encrypted,
    build_encrypted_notice,
    build_plain_notice,
)
from relay.crypto import GnuPG
from relay.errors import CryptoError
from tests.support.keys import KeyFactory, Keyring
from tests.support.keys import TestKey as Key

LIST = "distributors@example.org"
LIST_ID = "Distributors <distributors.example.org>"
SUBJECT = "CVE-2026-4242: Überlauf im kube-apiserver, embargoed until Thursday"
BODY = "The kubelet trusts a forged node lease; patch attached. Keep this embargoed."
POSTER = "reporter@vendor.example"
# A first header line longer than 78 columns: any re-serialisation would re-fold it.
LONG_HEADER = "X-Advisory-Reference: " + "-".join(f"ref{i:02d}" for i in range(20))
PAYLOAD = (
    "Content-Type: text/plain; charset=us-ascii\r\n"
    f"{LONG_HEADER}\r\n"
    "Content-Transfer-Encoding: 7bit\r\n"
    "\r\n"
    f"{BODY}\r\n"
    "From the top, with trailing space \r\n"
    ".a line starting with a dot\r\n"
).encode()
STRUCTURAL = {"mime-version", "content-type"}


class Relay:
    def __init__(self, home: Path, *members: Key) -> None:
        self.crypto = GnuPG(home)
        self.fingerprint = self.crypto.generate_key("Distributors", LIST)
        self.public = self.crypto.export_public(self.fingerprint)
        for member in members:
            self.crypto.import_keys(member.public)


@pytest.fixture(scope="module")
def alice(keys: KeyFactory) -> Key:
    return keys.make("alice")


@pytest.fixture(scope="module")
def bob(keys: KeyFactory) -> Key:
    return keys.make("bob")


@pytest.fixture(scope="module")
def relay(tmp_path_factory: pytest.TempPathFactory, alice: Key, bob: Key) -> Relay:
    return Relay(tmp_path_factory.mktemp("relay-gnupg"), alice, bob)


@pytest.fixture(scope="module")
def alice_ring(tmp_path_factory: pytest.TempPathFactory, alice: Key, relay: Relay) -> Keyring:
    return Keyring(tmp_path_factory.mktemp("alice"), alice, trusted_public=(relay.public,))


@pytest.fixture(scope="module")
def bob_ring(tmp_path_factory: pytest.TempPathFactory, bob: Key, relay: Relay) -> Keyring:
    return Keyring(tmp_path_factory.mktemp("bob"), bob, trusted_public=(relay.public,))


def make_copy(**overrides: object) -> Copy:
    fields: dict = dict(
        list_address=LIST,
        list_id=LIST_ID,
        recipient="alice@example.net",
        message_id="<c0ffee.1@example.org>",
        subject=SUBJECT,
        payload=PAYLOAD,
        preface=f"Signed by {POSTER}, signature verified.",
        extra_protected=(("X-Embargo-Until", "2026-05-07T16:00:00Z"),),
        in_reply_to="<thread-start@vendor.example>",
        date=datetime(2026, 5, 1, 9, 30, tzinfo=UTC),
    )
    fields.update(overrides)
    return Copy(**fields)


@pytest.fixture(scope="module")
def wire(relay: Relay, alice: Key) -> bytes:
    return build_encrypted(make_copy(), relay.crypto, relay.fingerprint, [alice.fingerprint])


def armoured(wire: bytes) -> bytes:
    outer = message_from_bytes(wire, policy=policy.default)
    return outer.get_payload()[1].get_payload(decode=True)


def decrypt(ring: Keyring, wire: bytes) -> tuple[bytes, list[list[str]]]:
    return ring.decrypt(armoured(wire))


def encryption_subkeys(ring: Keyring, fingerprint: str) -> set[str]:
    listing, _ = ring.status(["--with-colons", "--list-keys", fingerprint], b"")
    rows = [line.split(":") for line in listing.decode().splitlines()]
    return {row[4] for row in rows if row[0] == "sub" and "e" in row[11]}


def text_of(part: EmailMessage) -> str:
    """Decoded text with LF line ends (the wire form is CRLF)."""
    return part.get_content().replace("\r\n", "\n")


def inner_of(ring: Keyring, wire: bytes) -> tuple[bytes, EmailMessage]:
    plaintext, status = decrypt(ring, wire)
    assert ["DECRYPTION_OKAY"] in status
    return plaintext, message_from_bytes(plaintext, policy=policy.default)


# 1 and 2: who can read it, who signed it


def test_copy_decrypts_for_the_member_only_and_is_signed_by_the_list(
    wire: bytes, alice_ring: Keyring, alice: Key, relay: Relay
) -> None:
    _, status = decrypt(alice_ring, wire)
    keywords = [line[0] for line in status]
    assert "DECRYPTION_OKAY" in keywords
    assert {"BADSIG", "ERRSIG", "DECRYPTION_FAILED"}.isdisjoint(keywords)
    enc_to = [line[1] for line in status if line[0] == "ENC_TO"]
    assert enc_to == sorted(encryption_subkeys(alice_ring, alice.fingerprint))
    (validsig,) = [line for line in status if line[0] == "VALIDSIG"]
    assert validsig[-1] == relay.fingerprint


def test_another_member_cannot_decrypt_the_copy(wire: bytes, bob_ring: Keyring) -> None:
    plaintext, status = decrypt(bob_ring, wire)
    keywords = [line[0] for line in status]
    assert "DECRYPTION_OKAY" not in keywords
    assert "NO_SECKEY" in keywords
    assert plaintext == b""


# 3: the outer MIME structure


def test_outer_is_pgp_mime_with_only_the_allowed_fields(wire: bytes) -> None:
    outer = message_from_bytes(wire, policy=policy.default)
    assert outer.get_content_type() == "multipart/encrypted"
    assert outer.get_param("protocol") == "application/pgp-encrypted"
    version, data = outer.get_payload()
    assert version.get_content_type() == "application/pgp-encrypted"
    assert version.get_payload().strip() == "Version: 1"
    assert data.get_content_type() == "application/octet-stream"
    text = data.get_payload(decode=True)
    assert text.count(b"-----BEGIN PGP MESSAGE-----") == 1
    assert text.strip().endswith(b"-----END PGP MESSAGE-----")
    assert sorted(outer.keys()) == sorted(
        ["From", "To", "Subject", "Date", "Message-ID", "List-Id", "MIME-Version", "Content-Type"]
    )
    assert outer["From"] == LIST
    assert outer["To"] == "alice@example.net"
    assert outer["List-Id"] == LIST_ID
    assert outer["Message-ID"] == "<c0ffee.1@example.org>"


# 4: the protected headers inside


def test_inner_root_carries_the_real_headers_and_hp_outer_lines(
    wire: bytes, alice_ring: Keyring
) -> None:
    outer = message_from_bytes(wire, policy=policy.default)
    _, inner = inner_of(alice_ring, wire)
    assert inner.get_content_type() == "multipart/mixed"
    assert inner.get_param("hp") == "cipher"
    assert inner.get_param("protected-headers") == "v1"
    assert inner["Subject"] == SUBJECT
    for name in ("From", "To", "Date", "Message-ID", "List-Id"):
        assert inner[name] == outer[name]
    assert inner["In-Reply-To"] == "<thread-start@vendor.example>"
    assert inner["X-Embargo-Until"] == "2026-05-07T16:00:00Z"
    sent_outside = [f"{k}: {v}" for k, v in outer.items() if k.lower() not in STRUCTURAL]
    assert inner.get_all("HP-Outer") == sent_outside
    assert f"Subject: {OBSCURED_SUBJECT}" in sent_outside


def test_preface_comes_first_and_the_payload_last(wire: bytes, alice_ring: Keyring) -> None:
    _, inner = inner_of(alice_ring, wire)
    preface, payload = inner.get_payload()
    assert preface.get_content_type() == "text/plain"
    assert text_of(preface) == f"Signed by {POSTER}, signature verified.\n"
    assert BODY in payload.get_content()


def test_payload_bytes_are_carried_unchanged(wire: bytes, alice_ring: Keyring) -> None:
    plaintext, inner = inner_of(alice_ring, wire)
    boundary = inner.get_boundary().encode()
    last = plaintext.rsplit(b"--" + boundary + b"\r\n", 1)[1]
    assert last.endswith(b"\r\n--" + boundary + b"--\r\n")
    assert last[: -len(b"\r\n--" + boundary + b"--\r\n")] == PAYLOAD
    # The check above would fail had the email package re-serialised the entity.
    reparsed = message_from_bytes(PAYLOAD, policy=policy.SMTP)
    assert reparsed.as_bytes() != PAYLOAD


def test_copy_without_preface_holds_the_payload_alone(
    relay: Relay, alice: Key, alice_ring: Keyring
) -> None:
    wire = build_encrypted(
        make_copy(preface=None), relay.crypto, relay.fingerprint, [alice.fingerprint]
    )
    _, inner = inner_of(alice_ring, wire)
    (payload,) = inner.get_payload()
    assert BODY in payload.get_content()


@pytest.mark.parametrize(
    "subject",
    [
        "Ünïcödé: ключ скомпрометирован — 鍵の漏洩 🔐",
        "A very long subject line " * 6 + "ending in Ünïcödé",
    ],
)
def test_non_ascii_subject_round_trips_and_stays_inside(
    subject: str, relay: Relay, alice: Key, alice_ring: Keyring
) -> None:
    wire = build_encrypted(
        make_copy(subject=subject), relay.crypto, relay.fingerprint, [alice.fingerprint]
    )
    _, inner = inner_of(alice_ring, wire)
    assert inner["Subject"] == subject
    assert message_from_bytes(wire, policy=policy.default)["Subject"] == OBSCURED_SUBJECT
    assert_wire_hygiene(wire)


# 5: nothing confidential outside


def encodings(text: str) -> list[bytes]:
    raw = text.encode()
    return [
        raw,
        Header(text, "utf-8").encode().encode(),
        base64.b64encode(raw),
        base64.b64encode(raw).rstrip(b"="),
        quopri.encodestring(raw).rstrip(b"\n"),
    ]


def test_no_confidential_text_appears_outside(wire: bytes, alice_ring: Keyring) -> None:
    plaintext, _ = inner_of(alice_ring, wire)
    inner_subject = re.search(rb"^Subject: (.*(?:\r\n .*)*)", plaintext, re.M).group(1)
    secrets = [
        *encodings(SUBJECT),
        *encodings(BODY),
        b"CVE-2026-4242",
        b"Keep this embargoed",
        "Überlauf".encode(),
        inner_subject,
        POSTER.encode(),
        b"vendor.example",
        b"2026-05-07T16:00:00Z",
    ]
    for secret in secrets:
        assert secret not in wire, secret
    assert b"\r\nSubject: [...]\r\n" in wire
    for field in (b"Autocrypt", b"User-Agent", b"Received", b"In-Reply-To", b"X-Embargo"):
        assert field.lower() not in wire.lower()


# 6: wire hygiene


def assert_wire_hygiene(data: bytes) -> None:
    assert data.isascii()
    assert re.search(rb"\r(?!\n)|(?<!\r)\n", data) is None
    assert data.endswith(b"\r\n")
    for line in data[:-2].split(b"\r\n"):
        assert len(line) <= 78, line
        assert line == line.rstrip(b" \t"), line


def test_outer_bytes_are_7bit_crlf_short_lines_without_trailing_space(wire: bytes) -> None:
    assert_wire_hygiene(wire)


# Refusals


def test_crypto_failure_raises_instead_of_sending_plaintext(relay: Relay) -> None:
    unknown = "0123456789ABCDEF0123456789ABCDEF01234567"
    with pytest.raises(CryptoError):
        build_encrypted(make_copy(), relay.crypto, relay.fingerprint, [unknown])
    with pytest.raises(CryptoError):
        build_encrypted(make_copy(), relay.crypto, relay.fingerprint, [])


@pytest.mark.parametrize(
    ("overrides", "problem"),
    [
        ({"subject": "Hi\r\nBcc: everyone@example.com"}, "single line"),
        ({"recipient": "a@example.net\nBcc: b@example.com"}, "single line"),
        ({"message_id": "no-angle-brackets@example.org"}, "Message-ID"),
        ({"date": datetime(2026, 5, 1, 9, 30)}, "timezone"),
        ({"extra_protected": (("Content-Type", "text/html"),)}, "not allowed"),
        ({"extra_protected": (("Subject", "spoofed"),)}, "not allowed"),
        ({"extra_protected": (("Bad Name", "x"),)}, "not allowed"),
        ({"payload": PAYLOAD.replace(b"\r\n", b"\n")}, "CRLF"),
        ({"payload": b"just text, no header section\r\n"}, "not a MIME entity"),
    ],
)
def test_malformed_copies_are_refused(
    overrides: dict, problem: str, relay: Relay, alice: Key
) -> None:
    with pytest.raises(ValueError, match=problem):
        build_encrypted(
            make_copy(**overrides), relay.crypto, relay.fingerprint, [alice.fingerprint]
        )


# Notices


NOTICE = "Delivery to member carol@example.net failed: 550 5.1.1 no such user\nFrom now on: retry."


def test_plain_notice_is_clean_text_with_the_same_header_hygiene() -> None:
    wire = build_plain_notice(
        list_address=LIST,
        list_id=LIST_ID,
        recipient="admin@example.org",
        message_id="<notice.1@example.org>",
        subject="Delivery failure",
        text=NOTICE,
    )
    assert_wire_hygiene(wire)
    assert b"\r\nFrom now on" not in wire  # qp-escaped against mbox From-munging
    message = message_from_bytes(wire, policy=policy.default)
    assert sorted(message.keys()) == sorted(
        [
            "From",
            "To",
            "Subject",
            "Date",
            "Message-ID",
            "List-Id",
            "MIME-Version",
            "Content-Type",
            "Content-Transfer-Encoding",
        ]
    )
    assert message["To"] == "admin@example.org"
    assert message["Subject"] == "Delivery failure"
    assert message.get_content_type() == "text/plain"
    assert text_of(message) == NOTICE + "\n"


def test_encrypted_notice_keeps_subject_and_text_inside(
    relay: Relay, alice: Key, alice_ring: Keyring
) -> None:
    wire = build_encrypted_notice(
        list_address=LIST,
        list_id=LIST_ID,
        recipient="alice@example.net",
        message_id="<notice.2@example.org>",
        subject="Your key expires in 7 days",
        text=NOTICE,
        crypto=relay.crypto,
        signer=relay.fingerprint,
        recipient_keys=[alice.fingerprint],
    )
    assert_wire_hygiene(wire)
    assert b"expires" not in wire and b"carol@example.net" not in wire
    _, inner = inner_of(alice_ring, wire)
    assert inner["Subject"] == "Your key expires in 7 days"
    (text,) = inner.get_payload()
    assert text_of(text) == NOTICE + "\n"

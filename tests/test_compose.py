"""Outgoing copies, checked the way a member's mail client and an eavesdropper see them.

Real gpg throughout: the relay's own GnuPG home holds the list key; each member
decrypts in a separate home holding only their own secret key and the list's
public key. A copy is signed and encrypted in one OpenPGP message (RFC 3156 §6.2),
so each check of message-format.md §6 is made on the layer that carries it: the
encryption (who can read it and who vouches for it), the protected root (the real
headers, this copy's reference), and the outer bytes.
"""

from __future__ import annotations

import base64
import quopri
import re
import tomllib
from datetime import UTC, datetime
from email import message_from_bytes, policy
from email.header import Header
from email.message import EmailMessage
from pathlib import Path

import pytest
from click.testing import CliRunner

from relay.cli.root import cli
from relay.core.errors import CryptoError
from relay.core.gpg import GnuPG
from relay.model import Advisory, AdvisoryState
from relay.outbound.compose import (
    OBSCURED_SUBJECT,
    Copy,
    build_encrypted,
    build_encrypted_notice,
    build_plain_notice,
    payload_root,
)
from relay.outbound.preface import copy_note, embargo_preface, poster_notes, wrap
from tests.support.keys import KeyFactory, Keyring
from tests.support.keys import TestKey as Key
from tests.support.mail import OpenedCopy, pgp_mime_signed, text_entity
from tests.support.relayhome import RelayThread, distributors, smtp_post
from tests.support.smtpsink import SmtpSink

LIST = "distributors@example.org"
LIST_ID = "Distributors <distributors.example.org>"
ALICE_COPY_ID = "<c0ffee.1.alice@example.org>"
BOB_COPY_ID = "<c0ffee.1.bob@example.org>"
ALICE_REF = "ER-7K2F-9QXM-3HDT"
BOB_REF = "ER-4MZW-0PC8-KV5N"
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
# Outside and unsigned on purpose: the list's public key, for the member's client.
UNPROTECTED = {"autocrypt"}


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
        to=LIST,
        message_id=ALICE_COPY_ID,
        subject=SUBJECT,
        payload=PAYLOAD,
        preface=f"Signed by {POSTER}, signature verified.",
        extra_protected=(("X-Embargo-Until", "2026-05-07T16:00:00Z"),),
        in_reply_to="<thread-start@vendor.example>",
        reference=ALICE_REF,
        date=datetime(2026, 5, 1, 9, 30, tzinfo=UTC),
    )
    fields.update(overrides)
    return Copy(**fields)


@pytest.fixture(scope="module")
def wire(relay: Relay, alice: Key) -> bytes:
    return build_encrypted(make_copy(), relay.crypto, relay.fingerprint, [alice.fingerprint])


@pytest.fixture(scope="module")
def bob_wire(relay: Relay, bob: Key) -> bytes:
    bobs = make_copy(message_id=BOB_COPY_ID, reference=BOB_REF)
    return build_encrypted(bobs, relay.crypto, relay.fingerprint, [bob.fingerprint])


@pytest.fixture(scope="module")
def opened(wire: bytes, alice_ring: Keyring) -> OpenedCopy:
    return OpenedCopy(alice_ring, wire)


def keywords(status: list[list[str]]) -> list[str]:
    return [line[0] for line in status]


def encryption_subkeys(ring: Keyring, fingerprint: str) -> list[str]:
    listing, _ = ring.status(["--with-colons", "--list-keys", fingerprint], b"")
    rows = [line.split(":") for line in listing.decode().splitlines()]
    return sorted(row[4] for row in rows if row[0] == "sub" and "e" in row[11])


def outer_fields(wire: bytes) -> list[str]:
    """The non-structural outer fields, as the HP-Outer lines record them."""
    outer = message_from_bytes(wire, policy=policy.default)
    skip = STRUCTURAL | UNPROTECTED
    return [f"{name}: {value}" for name, value in outer.items() if name.lower() not in skip]


def text_of(part: EmailMessage) -> str:
    """Decoded text with LF line ends (the wire form is CRLF)."""
    return part.get_content().replace("\r\n", "\n")


# 1: who can read it


def test_copy_decrypts_with_the_members_key_alone(
    opened: OpenedCopy, alice: Key, alice_ring: Keyring
) -> None:
    assert opened.decrypted
    assert "DECRYPTION_FAILED" not in keywords(opened.decrypt_status)
    assert sorted(opened.enc_to) == encryption_subkeys(alice_ring, alice.fingerprint)


def test_another_member_cannot_decrypt_the_copy(wire: bytes, bob_ring: Keyring) -> None:
    other = OpenedCopy(bob_ring, wire)
    assert not other.decrypted
    assert "NO_SECKEY" in keywords(other.decrypt_status)
    assert other.signer is None and other.root_bytes == b""


# 2: who vouches for it


def test_the_list_key_signs_the_decrypted_root_in_the_same_message(
    opened: OpenedCopy, relay: Relay
) -> None:
    # One OpenPGP message, signed and encrypted (§6.2): exactly one signature, the list's,
    # over the very bytes decrypted; no detached signature part to splice or strip.
    status = keywords(opened.decrypt_status)
    assert status.count("NEWSIG") == 1 and status.count("GOODSIG") == 1
    assert {"BADSIG", "ERRSIG"}.isdisjoint(status)
    assert opened.signer == relay.fingerprint
    assert opened.root.get_content_type() == "multipart/mixed"
    assert b"multipart/signed" not in opened.root_bytes


def test_a_tampered_copy_does_not_open(wire: bytes, alice_ring: Keyring) -> None:
    armour = wire.index(b"-----BEGIN PGP MESSAGE-----")
    at = wire.index(b"\r\n\r\n", armour) + 40  # inside the ciphertext's base64
    flipped = b"A" if wire[at : at + 1] != b"A" else b"B"
    tampered = OpenedCopy(alice_ring, wire[:at] + flipped + wire[at + 1 :])
    assert tampered.signer is None
    assert not tampered.decrypted or "BADSIG" in keywords(tampered.decrypt_status)


def test_a_copy_signed_by_another_key_is_not_the_lists(
    alice: Key, alice_ring: Keyring, relay: Relay
) -> None:
    # A member forging a copy to itself cannot make it look like the list's.
    forged = build_encrypted(
        make_copy(), GnuPG(alice_ring.home), alice.fingerprint, [alice.fingerprint]
    )
    opened = OpenedCopy(alice_ring, forged)
    assert opened.decrypted and opened.signer == alice.fingerprint != relay.fingerprint


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
        [
            "From",
            "To",
            "Subject",
            "Date",
            "Message-ID",
            "List-Id",
            "Autocrypt",
            "MIME-Version",
            "Content-Type",
        ]
    )
    assert outer["From"] == LIST
    assert outer["To"] == LIST  # members are envelope recipients only
    assert outer["List-Id"] == LIST_ID
    assert outer["Message-ID"] == ALICE_COPY_ID
    assert outer["Subject"] == OBSCURED_SUBJECT


# 4: the protected headers inside


def test_root_carries_the_real_headers_and_hp_outer_lines(wire: bytes, opened: OpenedCopy) -> None:
    outer = message_from_bytes(wire, policy=policy.default)
    root = opened.root
    assert root.get_content_type() == "multipart/mixed"
    assert root.get_param("hp") == "cipher"
    assert root.get_param("protected-headers") == "v1"
    assert root["Subject"] == SUBJECT
    for name in ("From", "To", "Date", "List-Id", "Message-ID"):
        assert root[name] == outer[name]
    assert root["Message-ID"] == ALICE_COPY_ID  # the copy's own, inside and outside
    assert root["In-Reply-To"] == "<thread-start@vendor.example>"
    assert root["X-Embargo-Until"] == "2026-05-07T16:00:00Z"
    assert root["X-Copy-Reference"] == ALICE_REF
    assert root.get_all("HP-Outer") == outer_fields(wire)
    assert f"Subject: {OBSCURED_SUBJECT}" in root.get_all("HP-Outer")


def test_preface_comes_first_and_the_payload_last(opened: OpenedCopy) -> None:
    preface, payload = opened.root.get_payload()
    assert preface.get_content_type() == "text/plain"
    assert text_of(preface) == f"Signed by {POSTER}, signature verified.\n"
    assert BODY in payload.get_content()
    assert BODY in opened.text


def test_payload_bytes_are_carried_unchanged(opened: OpenedCopy) -> None:
    boundary = opened.root.get_boundary().encode()
    last = opened.root_bytes.rsplit(b"--" + boundary + b"\r\n", 1)[1]
    closing = b"\r\n--" + boundary + b"--\r\n"
    assert last.endswith(closing)
    assert last[: -len(closing)] == PAYLOAD
    # The check above would fail had the email package re-serialised the entity.
    reparsed = message_from_bytes(PAYLOAD, policy=policy.SMTP)
    assert reparsed.as_bytes() != PAYLOAD


def test_copy_without_preface_holds_the_payload_alone(
    relay: Relay, alice: Key, alice_ring: Keyring
) -> None:
    wire = build_encrypted(
        make_copy(preface=None), relay.crypto, relay.fingerprint, [alice.fingerprint]
    )
    opened = OpenedCopy(alice_ring, wire)
    assert opened.signer == relay.fingerprint
    (payload,) = opened.root.get_payload()
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
    opened = OpenedCopy(alice_ring, wire)
    assert opened.signer == relay.fingerprint
    assert opened.root["Subject"] == subject
    assert message_from_bytes(wire, policy=policy.default)["Subject"] == OBSCURED_SUBJECT
    assert_wire_hygiene(wire)


# One signature per copy, so each carries its own reference


def test_each_copy_is_signed_for_its_recipient_with_its_own_reference(
    wire: bytes,
    bob_wire: bytes,
    bob: Key,
    alice_ring: Keyring,
    bob_ring: Keyring,
    relay: Relay,
) -> None:
    alice_copy, bob_copy = OpenedCopy(alice_ring, wire), OpenedCopy(bob_ring, bob_wire)
    assert alice_copy.signer == bob_copy.signer == relay.fingerprint
    assert (alice_copy.reference, bob_copy.reference) == (ALICE_REF, BOB_REF)
    assert sorted(bob_copy.enc_to) == encryption_subkeys(bob_ring, bob.fingerprint)
    assert alice_copy.root["Message-ID"] != bob_copy.root["Message-ID"]
    # The same advisory in both: only what makes the copy differs.
    assert alice_copy.text == bob_copy.text and BODY in alice_copy.text
    alice_outer = message_from_bytes(wire, policy=policy.default)
    bob_outer = message_from_bytes(bob_wire, policy=policy.default)
    assert (alice_outer["Message-ID"], bob_outer["Message-ID"]) == (ALICE_COPY_ID, BOB_COPY_ID)
    same = [f for f in outer_fields(wire) if not f.startswith("Message-ID")]
    assert same == [f for f in outer_fields(bob_wire) if not f.startswith("Message-ID")]

    # Each copy opens with its own key only.
    for ring, other in ((alice_ring, bob_wire), (bob_ring, wire)):
        plaintext, status = ring.decrypt(other)
        assert "DECRYPTION_OKAY" not in keywords(status)
        assert "NO_SECKEY" in keywords(status)
        assert plaintext == b""


def test_copy_date_defaults_to_now_in_utc() -> None:
    copy = Copy(
        list_address=LIST,
        list_id=LIST_ID,
        to=LIST,
        message_id=ALICE_COPY_ID,
        subject=SUBJECT,
        payload=PAYLOAD,
    )
    assert copy.date.utcoffset() is not None
    assert abs((datetime.now(UTC) - copy.date).total_seconds()) < 3600


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


def test_no_confidential_text_appears_outside(wire: bytes, opened: OpenedCopy) -> None:
    inner_subject = re.search(rb"^Subject: (.*(?:\r\n .*)*)", opened.root_bytes, re.M).group(1)
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
        ALICE_REF.encode(),  # the reference names the recipient: inside only
    ]
    for secret in secrets:
        assert secret not in wire, secret
    assert b"\r\nSubject: [...]\r\n" in wire
    for name in (b"User-Agent", b"Received", b"In-Reply-To", b"X-Embargo", b"X-Copy"):
        assert name.lower() not in wire.lower()
    # The one Autocrypt header names the list and carries the list's public key, nothing else.
    (autocrypt,) = message_from_bytes(wire, policy=policy.compat32).get_all("Autocrypt")
    assert autocrypt.split(";")[0].strip() == f"addr={LIST}"


# 6: wire hygiene


def assert_wire_hygiene(data: bytes) -> None:
    assert data.isascii()
    assert re.search(rb"\r(?!\n)|(?<!\r)\n", data) is None
    assert data.endswith(b"\r\n")
    for line in data[:-2].split(b"\r\n"):
        assert len(line) <= 78, line
        assert line == line.rstrip(b" \t"), line


def test_outer_bytes_are_7bit_crlf_short_lines_without_trailing_space(
    wire: bytes, bob_wire: bytes
) -> None:
    assert_wire_hygiene(wire)
    assert_wire_hygiene(bob_wire)


def test_hygiene_check_can_fail() -> None:
    for bad in (b"a\nb\r\n", b"x" * 79 + b"\r\n", b"trailing \r\n", "Ü\r\n".encode()):
        with pytest.raises(AssertionError):
            assert_wire_hygiene(bad)


# Refusals


UNKNOWN = "0123456789ABCDEF0123456789ABCDEF01234567"


def test_crypto_failure_raises_instead_of_sending_plaintext(relay: Relay) -> None:
    for keys in ([UNKNOWN], []):
        with pytest.raises(CryptoError):
            build_encrypted(make_copy(), relay.crypto, relay.fingerprint, keys)


# python-gnupg passes the signer as --default-key, which gpg ignores with a warning when
# that secret key is missing, signing with the first secret key it holds instead.
@pytest.mark.parametrize("who", ["unknown", "public key only"])
def test_signing_without_the_signers_secret_key_is_refused(
    who: str, relay: Relay, alice: Key
) -> None:
    signer = UNKNOWN if who == "unknown" else alice.fingerprint
    with pytest.raises(CryptoError):
        build_encrypted(make_copy(), relay.crypto, signer, [alice.fingerprint])


@pytest.mark.parametrize(
    ("overrides", "problem"),
    [
        ({"subject": "Hi\r\nBcc: everyone@example.com"}, "single line"),
        ({"to": "a@example.net\nBcc: b@example.com"}, "single line"),
        ({"message_id": "no-angle-brackets@example.org"}, "Message-ID"),
        ({"message_id": "<a@b>\r\nBcc: c@example.com"}, "Message-ID"),
        ({"reference": "ER-1\r\nBcc: c@example.com"}, "single line"),
        ({"date": datetime(2026, 5, 1, 9, 30)}, "timezone"),
        ({"in_reply_to": "<a@b>\r\nBcc: c@example.com"}, "single line"),
        ({"extra_protected": (("Content-Type", "text/html"),)}, "not allowed"),
        ({"extra_protected": (("Subject", "spoofed"),)}, "not allowed"),
        ({"extra_protected": (("HP-Outer", "Subject: x"),)}, "not allowed"),
        ({"extra_protected": (("X-Copy-Reference", "ER-0000-0000-0000"),)}, "not allowed"),
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
    outer = message_from_bytes(wire, policy=policy.default)
    assert outer["To"] == LIST  # the recipient is named inside only, like a member
    assert outer["Subject"] == OBSCURED_SUBJECT
    opened = OpenedCopy(alice_ring, wire)
    assert sorted(opened.enc_to) == encryption_subkeys(alice_ring, alice.fingerprint)
    assert opened.signer == relay.fingerprint
    assert opened.root["Subject"] == "Your key expires in 7 days"
    assert opened.root["To"] == "alice@example.net"
    assert opened.root.get_all("HP-Outer") == outer_fields(wire)
    (text,) = opened.root.get_payload()
    assert text_of(text) == NOTICE + "\n"


# The list's key outside: the Autocrypt header


def autocrypt_of(wire: bytes) -> tuple[list[bytes], dict[str, str]]:
    """The Autocrypt field's lines as sent, and its attributes once unfolded."""
    head = wire.split(b"\r\n\r\n", 1)[0]
    start = head.index(b"\r\nAutocrypt:") + 2
    lines = [head[start:].split(b"\r\n")[0]]
    for line in head[start:].split(b"\r\n")[1:]:
        if not line.startswith(b" "):
            break
        lines.append(line)
    value = b" ".join(line.strip() for line in lines).decode().removeprefix("Autocrypt: ")
    return lines, {k.strip(): v.strip() for k, v in (a.split("=", 1) for a in value.split(";"))}


def test_the_autocrypt_header_is_the_list_key_well_folded(
    wire: bytes, relay: Relay, alice_ring: Keyring
) -> None:
    lines, attributes = autocrypt_of(wire)
    assert all(len(line) <= 78 for line in lines) and len(lines) > 3
    assert attributes["addr"] == LIST and attributes["prefer-encrypt"] == "mutual"
    keydata = base64.b64decode("".join(attributes["keydata"].split()), validate=True)
    listing, _ = alice_ring.status(["--with-colons", "--show-keys"], keydata)
    rows = [line.split(":") for line in listing.decode().splitlines()]
    assert next(r[9] for r in rows if r[0] == "fpr") == relay.fingerprint
    assert [r[9] for r in rows if r[0] == "uid"] == [f"Distributors <{LIST}>"]
    assert [r[0] for r in rows if r[0] in ("pub", "sub", "sec", "ssb")] == ["pub", "sub"]


def test_the_autocrypt_header_is_outside_the_signature(
    wire: bytes, opened: OpenedCopy, alice_ring: Keyring, relay: Relay
) -> None:
    lines, _ = autocrypt_of(wire)
    field = b"\r\n".join(lines) + b"\r\n"
    assert b"Autocrypt" not in opened.root_bytes  # no HP-Outer line, nothing signed
    for changed in (wire.replace(field, b""), wire.replace(b"\r\n" + lines[-1], b"\r\n AAAA")):
        assert changed != wire
        again = OpenedCopy(alice_ring, changed)
        assert again.signer == relay.fingerprint
        assert again.root_bytes == opened.root_bytes
    assert message_from_bytes(wire, policy=policy.default).get_content_type() == (
        "multipart/encrypted"
    )


def test_a_copy_signed_by_a_key_without_the_lists_user_id_has_no_autocrypt_header(
    alice: Key, alice_ring: Keyring
) -> None:
    forged = build_encrypted(
        make_copy(), GnuPG(alice_ring.home), alice.fingerprint, [alice.fingerprint]
    )
    assert b"Autocrypt" not in forged


# Every copy's outer To is the list


def test_a_copy_for_one_person_names_them_inside_only(
    relay: Relay, alice: Key, alice_ring: Keyring
) -> None:
    person = "dev@distro-a.example"
    wire = build_encrypted(
        make_copy(to=person), relay.crypto, relay.fingerprint, [alice.fingerprint]
    )
    assert person.encode() not in wire
    assert message_from_bytes(wire, policy=policy.default)["To"] == LIST
    opened = OpenedCopy(alice_ring, wire)
    assert opened.root["To"] == person
    assert f"To: {LIST}" in opened.root.get_all("HP-Outer")


def test_the_terms_copy_of_a_grant_is_to_the_list(
    tmp_path: Path, keys: KeyFactory, sink: SmtpSink
) -> None:
    home = distributors(tmp_path, keys, sink.port, members=1)
    member = keys.make("distro0", "security@distro0.example")
    dev = keys.make("dev0", "dev@distro0.example")
    src = keys.make("src", "src@example.org")
    body = "X-Advisory: CVE-2026-5151\nX-Embargo-Until: +9d\n\nThe flaw.\n"
    post = pgp_mime_signed(
        home.client(src),
        src.fingerprint,
        text_entity(body),
        subject="s",
        sender=src.address,
        to=LIST,
    )
    config = ["--config", str(home.config_path)]
    with RelayThread(home.settings) as relay:
        assert relay.run(smtp_post(relay.port, post))[0] == 250
        sink.wait_for(1, timeout=60)
        args = ["share", "CVE-2026-5151", dev.address, "--key", str(dev.public_file)]
        shared = CliRunner().invoke(cli, [*config, *args, "--for", member.address])
        assert shared.exit_code == 0, shared.output
        (terms,) = [m for m in sink.wait_for(2, timeout=60) if m.rcpt_tos == (dev.address,)]
    outer = message_from_bytes(terms.data, policy=policy.default)
    assert outer["To"] == LIST and outer["From"] == LIST
    assert dev.address.encode() not in terms.data
    opened = OpenedCopy(home.client(dev), terms.data)
    assert opened.signer == home.list_fpr and "X-Accept:" in opened.text
    assert opened.root["To"] == dev.address  # the person, inside the encryption only


# The notice in each copy: lines of at most 72 characters


def too_long(text: str) -> list[str]:
    """Lines over 72 characters, but for one word that cannot break (an address)."""
    return [line for line in text.splitlines() if len(line) > 72 and " " in line.strip()]


SHIPPED = Path(__file__).resolve().parent.parent / "relay" / "policies"


@pytest.mark.parametrize("rules", ["", *sorted(p.name for p in SHIPPED.glob("*.toml"))])
@pytest.mark.parametrize("state", ["unset", "embargoed", "lifted", "cancelled"])
def test_no_line_of_a_copys_notice_exceeds_72_characters(
    state: str, rules: str, relay: Relay, alice: Key, alice_ring: Keyring
) -> None:
    lift = datetime(2026, 12, 3, 16, 0, tzinfo=UTC)
    advisory = Advisory(
        id="CVE-2026-424242",
        title="t",
        state={"lifted": AdvisoryState.LIFTED, "cancelled": AdvisoryState.CANCELLED}.get(
            state, AdvisoryState.EMBARGOED
        ),
        lift_at=None if state == "unset" else lift,
        lifted_at=lift if state == "lifted" else None,
    )
    words = tomllib.loads((SHIPPED / rules).read_text())["notice"] if rules else None
    contact = "security-response-committee@kubernetes-security.example.org"
    notes = [embargo_preface(advisory, words, security_contact=contact)]
    notes += poster_notes(
        "distributors-announce@kubernetes.io",
        "security-response-lead@vendor.example.com",
        "0123456789ABCDEF0123456789ABCDEF01234567",
        "A Very Long Display Name <somebody.else@an-unrelated-domain.example>",
    )
    notes.append(copy_note("security-team@a-long-distribution-name.example.org", ALICE_REF))
    text = "\n".join(notes)
    assert too_long(text) == []
    flowed = " ".join(text.split())
    if state != "lifted":
        assert f"tell {contact} at once: exactly what leaked and to whom." in flowed
    if rules:  # the policy's words, re-wrapped, all there
        assert " ".join(words.split()) in flowed

    # And as the member reads it: the decoded first part of the copy.
    wire = build_encrypted(
        make_copy(preface=text), relay.crypto, relay.fingerprint, [alice.fingerprint]
    )
    first = OpenedCopy(alice_ring, wire).root.get_payload()[0]
    assert text_of(first) == text + ("" if text.endswith("\n") else "\n")
    assert too_long(text_of(first)) == []


def test_the_width_check_can_fail() -> None:
    assert too_long("x " * 40) == ["x " * 40]
    assert too_long("a" * 80) == []  # one unbreakable word


def test_wrapping_keeps_paragraphs_and_list_items() -> None:
    text = wrap(
        "First paragraph, short.\n\n- an item that is long enough to need a second line when"
        " filled at seventy-two\n- a second item\n1. numbered"
    )
    assert text == (
        "First paragraph, short.\n\n"
        "- an item that is long enough to need a second line when filled at\n"
        "  seventy-two\n"
        "- a second item\n"
        "1. numbered\n"
    )


@pytest.mark.parametrize(
    "payload",
    [
        b"Content-Type: text/plain\r\n\r\nbare LF\nhere\r\n",
        b"Content-Type: text/plain\r\n\r\nbare CR\rhere\r\n",
        b"Content-Type: text/plain\n\nLF only\n",
        b"Content-Type: text/plain\r\n\r\nLF CR\n\rhere\r\n",
    ],
    ids=["bare-lf", "bare-cr", "lf-only", "lf-cr"],
)
def test_a_payload_with_a_line_end_other_than_crlf_is_refused(payload: bytes) -> None:
    with pytest.raises(ValueError, match="CRLF line ends only"):
        payload_root(make_copy(payload=payload), [])


def test_a_megabyte_crlf_payload_is_taken_whole() -> None:
    body = b"".join(b"line %d of a long advisory\r\n" % n for n in range(40_000))
    root = payload_root(make_copy(payload=b"Content-Type: text/plain\r\n\r\n" + body), [])
    assert body in root

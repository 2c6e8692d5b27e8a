"""Signed posts, with real keys and the real gpg: which forms verify, what is redistributed."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from email import policy
from email.message import EmailMessage, MIMEPart
from pathlib import Path

import pytest

from relay.core.crypto import Crypto
from relay.core.gpg import GnuPG
from relay.core.sequoia import Sequoia
from relay.inbound import (
    Rejection,
    VerifiedPost,
    admit,
    check_structure,
    check_wire,
    freshness,
)
from tests.support import backends
from tests.support import keys as support  # not TestKey by name: pytest would collect it

SMTP = policy.SMTP
BOUNDARY = b"signed-7d1f"
SUBJECT = "[CVE-2026-1234] kubelet escape"


def crlf(data: bytes) -> bytes:
    return re.sub(rb"\r?\n", b"\r\n", data)


@dataclass
class Relay:
    """The relay's keyring plus the senders' mail client (one keyring holding their keys)."""

    crypto: Crypto
    list_fpr: str
    ring: support.Keyring
    people: dict[str, support.TestKey]
    authorised: set[str]

    def fpr(self, name: str) -> str:
        return self.people[name].fingerprint

    def post(self, raw: bytes) -> VerifiedPost:
        # In the relay's order: linear checks, the signature, then the strict parse.
        return admit(raw, self.crypto, self.authorised.__contains__)[1]

    def refuse(self, raw: bytes, reply_start: str) -> str:
        with pytest.raises(Rejection) as caught:
            self.post(raw)
        reply = caught.value.reply
        assert reply.startswith(reply_start), reply
        return reply

    def detach_sign(self, data: bytes, name: str = "poster") -> bytes:
        return self.ring.detach_sign(data, self.fpr(name))

    def clearsign(self, text: str, name: str = "poster") -> str:
        return self.ring.clearsign(text.encode(), self.fpr(name)).decode()


@pytest.fixture(scope="module")
def relay(keys: support.KeyFactory, tmp_path_factory: pytest.TempPathFactory) -> Relay:
    people = {
        "poster": keys.make("inbound-poster"),
        "outsider": keys.make("inbound-outsider"),  # key known to the relay, not authorised
        "stranger": keys.make("inbound-stranger"),  # key unknown to the relay
        "expired": keys.expired("inbound-expired"),
        "revoked": keys.revoked("inbound-revoked"),
    }
    root = Path(tmp_path_factory.mktemp("inbound"))
    # The session's backend, as the relay runs it (RELAY_TEST_BACKEND).
    crypto: Crypto = (
        GnuPG(root / "relay-gnupg")
        if backends.BACKEND == backends.GNUPG
        else Sequoia(root / "relay-keyring")
    )
    list_fpr = crypto.generate_key("Announce list", "announce@example.org")
    for name in ("poster", "outsider", "expired", "revoked"):
        crypto.import_keys(people[name].public)
    ring = support.Keyring(
        root / "senders", *people.values(), trusted_public=(crypto.export_public(list_fpr),)
    )
    authorised = {people[n].fingerprint for n in ("poster", "expired", "revoked")}
    return Relay(crypto, list_fpr, ring, people, authorised)


# Message builders. Signed bytes are assembled by hand around the exact bytes that were
# signed; the email package builds everything that is not covered by a signature.


def outer_headers(subject: str) -> bytes:
    return (
        b"From: poster@example.net\r\nTo: announce@example.org\r\n"
        b"Subject: " + subject.encode() + b"\r\nMIME-Version: 1.0\r\n"
    )


def content_entity(text: str, subject: str | None = None) -> bytes:
    """The entity a client signs: its own MIME headers, CRLF, optionally protected headers."""
    part = MIMEPart(policy=SMTP)
    part.set_content(text, cte="quoted-printable")
    if subject is not None:
        part.set_param("protected-headers", "v1")
        part["Subject"] = subject
    return part.as_bytes()


def multipart_signed(content: bytes, signature: bytes) -> bytes:
    """A multipart/signed entity (Content-Type header + body) around `content`."""
    return (
        b"Content-Type: multipart/signed; micalg=pgp-sha512;\r\n"
        b' protocol="application/pgp-signature"; boundary="%(b)s"\r\n\r\n'
        b"This is an OpenPGP/MIME signed message (RFC 4880 and 3156)\r\n"
        b"--%(b)s\r\n%(content)s\r\n--%(b)s\r\n"
        b'Content-Type: application/pgp-signature; name="signature.asc"\r\n\r\n'
        b"%(signature)s\r\n--%(b)s--\r\n"
    ) % {b"b": BOUNDARY, b"content": content, b"signature": crlf(signature)}


def pgp_mime(content: bytes, signature: bytes, subject: str = "Advisory") -> bytes:
    return outer_headers(subject) + multipart_signed(content, signature)


def text_message(body: str, subject: str = "Advisory", cte: str = "quoted-printable") -> bytes:
    msg = EmailMessage(policy=SMTP)
    msg["From"] = "poster@example.net"
    msg["To"] = "announce@example.org"
    msg["Subject"] = subject
    msg.set_content(body, charset="utf-8", cte=cte)
    return msg.as_bytes()


def encrypted(ciphertext: bytes, subject: str = "[...]") -> bytes:
    msg = EmailMessage(policy=SMTP)
    msg["From"] = "poster@example.net"
    msg["To"] = "announce@example.org"
    msg["Subject"] = subject
    msg.set_type("multipart/encrypted")
    msg.set_param("protocol", "application/pgp-encrypted")
    version, data = MIMEPart(policy=SMTP), MIMEPart(policy=SMTP)
    version.set_content(b"Version: 1\r\n", "application", "pgp-encrypted", cte="7bit")
    data.set_content(
        ciphertext, "application", "octet-stream", cte="7bit", filename="encrypted.asc"
    )
    msg.attach(version)
    msg.attach(data)
    return msg.as_bytes()


ADVISORY = "Patch before the lift date.\nGrüße, the security team\n"
CLEARTEXT = "Fix the kubelet.\n- a dashed line\nFrom the top\nGrüße\n"


# PGP/MIME


def test_pgp_mime_post_yields_signed_bytes_signer_and_protected_subject(relay: Relay) -> None:
    content = content_entity(ADVISORY, subject=SUBJECT)
    post = relay.post(pgp_mime(content, relay.detach_sign(content), subject="..."))

    assert (post.signer, post.payload, post.subject, post.form) == (
        relay.fpr("poster"),
        content,
        SUBJECT,
        "pgp-mime",
    )
    assert post.protected["subject"] == SUBJECT
    assert abs((post.signed_at - datetime.now(UTC)).total_seconds()) < 600
    assert post.identity == freshness.identity(relay.fpr("poster"), post.signed_at, content)


def test_unmarked_inner_subject_and_the_outer_subject_are_not_used(relay: Relay) -> None:
    content = content_entity(ADVISORY).replace(b"\r\n\r\n", b"\r\nSubject: inner\r\n\r\n", 1)
    post = relay.post(pgp_mime(content, relay.detach_sign(content), subject="outer"))
    assert post.subject == "" and post.protected == {}


def test_the_same_signature_has_one_identity_whatever_surrounds_it(relay: Relay) -> None:
    content = content_entity(ADVISORY, subject=SUBJECT)
    signature = relay.detach_sign(content)
    first = relay.post(pgp_mime(content, signature, subject="one"))
    # New outer headers, re-armoured signature with an armour header, or the same signed
    # entity wrapped in encryption to the list: one signature, one identity.
    armour = signature.replace(b"\n\n", b"\nComment: replayed\n\n", 1)
    second = relay.post(pgp_mime(content, armour, subject="CANCELLED - deploy now"))
    inner = multipart_signed(content, signature)
    third = relay.post(encrypted(relay.ring.encrypt(inner, [relay.list_fpr])))
    assert first.identity == second.identity == third.identity
    # A new signature over the same words (a second later) is a new post.
    import time

    time.sleep(1.1)
    fresh = relay.post(pgp_mime(content, relay.detach_sign(content)))
    assert fresh.identity != first.identity


def test_trailing_spaces_added_to_a_cleartext_post_keep_its_identity(relay: Relay) -> None:
    signed = relay.clearsign(CLEARTEXT)
    padded = signed.replace("Fix the kubelet.\n", "Fix the kubelet.   \n", 1)
    first = relay.post(text_message(signed))
    second = relay.post(text_message(padded, cte="8bit"))
    assert first.identity == second.identity


def test_long_folded_subject_verifies_from_the_raw_slice_only(relay: Relay) -> None:
    long_subject = (
        "[CVE-2026-1234] Embargoed: container escape through the kubelet image volume handler"
        " in every supported release"
    )
    fold = long_subject.index(" ", 90)  # a line of more than 100 columns, folded once
    head, rest = long_subject[:fold], long_subject[fold + 1 :]
    content = (
        b'Content-Type: text/plain; charset="utf-8"; protected-headers="v1"\r\n'
        b"Subject: " + head.encode() + b"\r\n " + rest.encode() + b"\r\n"
        b"Content-Transfer-Encoding: 7bit\r\n\r\nPatch before the lift date.\r\n"
    )
    signature = relay.detach_sign(content)
    raw = pgp_mime(content, signature)

    post = relay.post(raw)
    assert (post.payload, post.subject, post.form) == (content, long_subject, "pgp-mime")

    signed_part = check_structure(raw).get_payload(0)
    for reserialised in (crlf(signed_part.as_bytes()), signed_part.as_bytes(policy=SMTP)):
        assert reserialised != content
        assert not relay.crypto.verify_detached(reserialised, signature).valid


def test_signed_part_beside_an_unsigned_part_is_rejected(relay: Relay) -> None:
    content = content_entity(ADVISORY)
    signed = multipart_signed(content, relay.detach_sign(content))
    raw = outer_headers("Advisory") + (
        b'Content-Type: multipart/mixed; boundary="mixed-1"\r\n\r\n'
        b"--mixed-1\r\n" + signed + b"\r\n--mixed-1\r\n"
        b"Content-Type: text/plain\r\n\r\nPAY 1000 EUR TO MALLORY\r\n--mixed-1--\r\n"
    )
    assert "only part of the post is signed" in relay.refuse(raw, "550 5.7.1 ")


def test_tampered_pgp_mime_post_is_a_bad_signature(relay: Relay) -> None:
    content = content_entity(ADVISORY)
    signature = relay.detach_sign(content)
    tampered = content.replace(b"Patch before", b"Patch after!")
    assert "bad signature" in relay.refuse(pgp_mime(tampered, signature), "550 5.7.7 ")


def test_two_signatures_are_rejected(relay: Relay) -> None:
    content = content_entity(ADVISORY)
    both = relay.detach_sign(content) + relay.detach_sign(content, "outsider")
    assert "more than one signature" in relay.refuse(pgp_mime(content, both), "550 5.7.1 ")


def test_smime_signature_is_rejected(relay: Relay) -> None:
    content = content_entity(ADVISORY)
    raw = pgp_mime(content, relay.detach_sign(content)).replace(
        b'protocol="application/pgp-signature"', b'protocol="application/pkcs7-signature"'
    )
    assert "only OpenPGP signatures" in relay.refuse(raw, "550 5.7.1 ")


# Key states and authorisation


@pytest.mark.parametrize(
    ("signer", "reason"),
    [
        ("stranger", "signed by an unknown key"),
        ("expired", "the signing key has expired"),
        ("revoked", "the signing key is revoked"),
    ],
)
def test_signature_by_unusable_key_is_rejected(relay: Relay, signer: str, reason: str) -> None:
    content = content_entity(ADVISORY)
    fpr = relay.fpr(signer)
    # The expired key lived for one day in 2020: sign within it.
    when = ["--faked-system-time", "20200101T120000!"] if signer == "expired" else []
    signature, _ = relay.ring.status(
        [*when, "--detach-sign", "--armor", "--local-user", fpr], content
    )
    reply = relay.refuse(pgp_mime(content, signature), "550 5.7.1 ")
    assert reply == f"550 5.7.1 signature not accepted: {reason}"


def test_valid_signature_by_unauthorised_key_is_rejected(relay: Relay) -> None:
    content = content_entity(ADVISORY)
    raw = pgp_mime(content, relay.detach_sign(content, "outsider"))
    reply = relay.refuse(raw, "550 5.7.1 ")
    assert reply == (
        f"550 5.7.1 the signing key {relay.fpr('outsider')} is not authorised to post to this list"
    )


# Inline cleartext signatures


def test_inline_post_redistributes_only_what_gpg_returns(relay: Relay) -> None:
    post = relay.post(text_message(relay.clearsign(CLEARTEXT), subject="Kubelet fix"))

    # The outer Subject is unsigned: an inline post has no Subject of its own.
    assert (post.signer, post.subject, post.form) == (relay.fpr("poster"), "", "inline")
    entity = check_structure(post.payload)
    assert entity.get_content_type() == "text/plain"
    assert entity.get_content_charset() == "utf-8"
    assert entity.get_content().replace("\r\n", "\n") == CLEARTEXT
    assert b"PGP" not in post.payload
    check_wire(post.payload)


@pytest.mark.parametrize(
    ("before", "after"),
    [("PAY 1000 EUR TO MALLORY\n\n", ""), ("", "\nP.S. wire the money to MALLORY\n")],
    ids=["text-before", "text-after"],
)
def test_text_around_a_cleartext_signature_is_rejected(
    relay: Relay, before: str, after: str
) -> None:
    body = before + relay.clearsign(CLEARTEXT) + after
    assert relay.crypto.verify_cleartext(body.encode())[0].valid  # gpg alone would accept it
    reply = relay.refuse(text_message(body), "550 5.7.1 ")
    assert "no text outside it" in reply


def test_whitespace_around_a_cleartext_signature_is_accepted(relay: Relay) -> None:
    body = "\n \n" + relay.clearsign(CLEARTEXT) + "\n\t\n"
    assert relay.post(text_message(body, cte="8bit")).form == "inline"


def test_tampered_cleartext_is_a_bad_signature(relay: Relay) -> None:
    body = relay.clearsign(CLEARTEXT).replace("Fix the kubelet.", "Fix the kubelat.")
    assert "bad signature" in relay.refuse(text_message(body), "550 5.7.7 ")


@pytest.mark.parametrize(
    "raw",
    [
        text_message("Just a plain note.\n"),
        outer_headers("x") + b'Content-Type: multipart/alternative; boundary="a"\r\n\r\n'
        b"--a\r\nContent-Type: text/plain\r\n\r\nhi\r\n--a\r\n"
        b"Content-Type: text/html\r\n\r\n<p>hi</p>\r\n--a--\r\n",
    ],
    ids=["text", "alternative"],
)
def test_unsigned_post_is_rejected(relay: Relay, raw: bytes) -> None:
    assert "not signed" in relay.refuse(raw, "550 5.7.1 ")


# Encrypted to the list


def test_encrypted_pgp_mime_post_yields_the_inner_signed_bytes(relay: Relay) -> None:
    content = content_entity(ADVISORY, subject=SUBJECT)
    inner = multipart_signed(content, relay.detach_sign(content))
    post = relay.post(encrypted(relay.ring.encrypt(inner, [relay.list_fpr])))

    assert (post.signer, post.payload, post.subject, post.form) == (
        relay.fpr("poster"),
        content,
        SUBJECT,
        "encrypted/pgp-mime",
    )


def test_encrypted_inline_post_verifies(relay: Relay) -> None:
    inner = MIMEPart(policy=SMTP)
    inner.set_content(relay.clearsign(CLEARTEXT), charset="utf-8", cte="quoted-printable")
    post = relay.post(encrypted(relay.ring.encrypt(inner.as_bytes(), [relay.list_fpr])))

    assert (post.signer, post.form, post.subject) == (
        relay.fpr("poster"),
        "encrypted/inline",
        "",
    )
    assert check_structure(post.payload).get_content().replace("\r\n", "\n") == CLEARTEXT


COMBINED = "Sequoia backend: a signature inside the encryption is refused (README)"


@backends.sequoia_difference(COMBINED)
def test_combined_signed_and_encrypted_post_yields_the_whole_entity(relay: Relay) -> None:
    inner = EmailMessage(policy=SMTP)
    inner.set_content(ADVISORY)
    inner.make_mixed()
    inner.set_param("hp", "cipher")
    inner["Subject"] = SUBJECT
    plaintext = inner.as_bytes()
    ciphertext = relay.ring.sign_encrypt(plaintext, relay.fpr("poster"), [relay.list_fpr])

    post = relay.post(encrypted(ciphertext))

    assert (post.signer, post.payload, post.subject, post.form) == (
        relay.fpr("poster"),
        plaintext,
        SUBJECT,
        "encrypted/combined",
    )


@backends.sequoia_difference(COMBINED)
def test_combined_post_signed_by_unknown_key_is_rejected(relay: Relay) -> None:
    plaintext = content_entity(ADVISORY)
    ciphertext = relay.ring.sign_encrypt(plaintext, relay.fpr("stranger"), [relay.list_fpr])
    assert "unknown key" in relay.refuse(encrypted(ciphertext), "550 5.7.1 ")


@pytest.mark.skipif(backends.BACKEND != backends.SEQUOIA, reason="the Sequoia backend's refusal")
@pytest.mark.parametrize("compressed", [True, False], ids=["compressed", "uncompressed"])
def test_a_combined_post_is_refused_on_sequoia_naming_the_form_it_takes(
    relay: Relay, compressed: bool
) -> None:
    plaintext = content_entity(ADVISORY)
    extra = [] if compressed else ["--compress-algo", "none"]
    ciphertext, _ = relay.ring.status(
        [
            "--armor",
            "--sign",
            "--local-user",
            relay.fpr("poster"),
            "--encrypt",
            "--recipient",
            relay.list_fpr,
            *extra,
        ],
        plaintext,
    )
    reply = relay.refuse(encrypted(ciphertext), "550 5.7.1 ")
    assert "signature not accepted" in reply and "only as a PGP/MIME signed part" in reply
    # The form it names is taken: PGP/MIME signed, then encrypted.
    signed = multipart_signed(plaintext, relay.detach_sign(plaintext))
    post = relay.post(encrypted(relay.ring.encrypt(signed, [relay.list_fpr])))
    assert post.signer == relay.fpr("poster")


def test_encrypted_but_unsigned_post_is_rejected(relay: Relay) -> None:
    ciphertext = relay.ring.encrypt(content_entity(ADVISORY), [relay.list_fpr])
    assert "not signed" in relay.refuse(encrypted(ciphertext), "550 5.7.1 ")


def test_post_encrypted_to_another_key_is_rejected(relay: Relay) -> None:
    ciphertext = relay.ring.encrypt(content_entity(ADVISORY), [relay.fpr("stranger")])
    reply = relay.refuse(encrypted(ciphertext), "550 5.7.5 ")
    assert (
        reply == "550 5.7.5 cannot decrypt the post: the message is not encrypted to the list key"
    )


def test_decrypted_entity_must_pass_the_structure_checks(relay: Relay) -> None:
    broken = b'Content-Type: multipart/mixed; boundary="x"\r\n\r\n--x\r\n\r\nno close\r\n'
    ciphertext = relay.ring.sign_encrypt(broken, relay.fpr("poster"), [relay.list_fpr])
    assert "close delimiter" in relay.refuse(encrypted(ciphertext), "554 5.6.0 ")

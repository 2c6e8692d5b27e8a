"""Outgoing copies: the exact bytes of what one member receives.

Each copy is one OpenPGP message (RFC 3156 §6.2, combined): signed by the list key
and encrypted to that member's keys only, so the signature covers the whole inner
entity, headers included. The real headers live only inside, on a
`multipart/mixed` root marked both `protected-headers="v1"` (Thunderbird, K-9,
mutt) and `hp="cipher"` (RFC 9788), with one `HP-Outer` line per outer field.
Outside, only an allow-list travels and the Subject is the literal `[...]`
(RFC 9788 `hcp_baseline`).

The carried payload is spliced in byte for byte: re-serialising it with the
`email` package could re-fold or re-encode what its author signed. Everything
else is built here from scratch with `policy.SMTP` (CRLF, RFC 2047, 78 columns).
Crypto errors propagate: the caller holds the delivery, never sends plaintext.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from email import policy
from email.message import MIMEPart
from email.utils import format_datetime

from relay.crypto import Crypto
from relay.errors import CryptoError

OBSCURED_SUBJECT = "[...]"
PREAMBLE = b"This is an OpenPGP/MIME encrypted message (RFC 4880 and 3156)\r\n"

_SMTP = policy.SMTP
_CRLF = b"\r\n"
_MESSAGE_ID = re.compile(r"^<[^<>\s@]+@[^<>\s@]+>$")
_FIELD_NAME = re.compile(r"^[!-9;-~]+$")
_HEADER_LINE = re.compile(rb"^(?:[!-9;-~]+:|[ \t])")
_BARE_EOL = re.compile(rb"\r(?!\n)|(?<!\r)\n")
# Fields the relay sets itself; extra protected fields may not shadow them.
_RESERVED = {"from", "to", "cc", "bcc", "subject", "date", "message-id", "in-reply-to"}
_RESERVED |= {"references", "list-id", "hp-outer", "mime-version"}


@dataclass(frozen=True)
class Copy:
    """Everything that goes into one member's copy."""

    list_address: str  # From, and the envelope sender
    list_id: str  # List-Id value, e.g. 'Distributors <distributors.example.org>'
    recipient: str  # the one To address
    message_id: str  # this copy's own Message-ID, e.g. '<abc123@example.org>'
    subject: str  # the real subject: only ever inside the encryption
    payload: bytes  # the verified MIME entity to carry (own headers + body, CRLF)
    preface: str | None = None  # short text/plain note placed first; None = no note
    extra_protected: tuple[tuple[str, str], ...] = ()  # extra fields placed only inside
    in_reply_to: str | None = None
    date: datetime | None = None  # default: now, UTC


def build_encrypted(copy: Copy, crypto: Crypto, signer: str, recipient_keys: list[str]) -> bytes:
    """The wire bytes of one copy, signed by `signer`, encrypted to `recipient_keys` only."""
    _check_entity(copy.payload)
    outer = _outer_fields(
        copy.list_address,
        copy.list_id,
        copy.recipient,
        copy.message_id,
        OBSCURED_SUBJECT,
        copy.date,
    )
    subject = _one_line("Subject", copy.subject)
    protected = [(name, subject if name == "Subject" else value) for name, value in outer]
    if copy.in_reply_to is not None:
        protected.append(("In-Reply-To", _one_line("In-Reply-To", copy.in_reply_to)))
    for name, value in copy.extra_protected:
        if not _FIELD_NAME.match(name) or name.lower() in _RESERVED or _structural(name):
            raise ValueError(f"not allowed as an extra protected field: {name!r}")
        protected.append((name, _one_line(name, value)))
    protected += [("HP-Outer", f"{name}: {value}") for name, value in outer]

    parts = [copy.payload] if copy.preface is None else [text_part(copy.preface), copy.payload]
    inner_boundary = _boundary(*parts)
    inner = b"".join(
        [
            _fold(
                "Content-Type",
                _multipart("mixed", inner_boundary, 'protected-headers="v1"; hp="cipher"'),
            ),
            *(_fold(name, value) for name, value in protected),
            _CRLF,
            *(b"--" + inner_boundary + _CRLF + part + _CRLF for part in parts),
            b"--" + inner_boundary + b"--" + _CRLF,
        ]
    )
    armour = crypto.sign_encrypt(inner, recipient_keys, signer)
    return _envelope(outer, _armour(armour))


def build_plain_notice(
    *,
    list_address: str,
    list_id: str,
    recipient: str,
    message_id: str,
    subject: str,
    text: str,
    date: datetime | None = None,
) -> bytes:
    """A plain text/plain notice, for a recipient without a key.

    Only for relay notices that quote no advisory content: the subject and
    text travel in the clear.
    """
    fields = _outer_fields(list_address, list_id, recipient, message_id, subject, date)
    body = text_part(text)
    _check_entity(body)
    head = b"".join(_fold(name, value) for name, value in fields)
    message = head + _fold("MIME-Version", "1.0") + body
    _check_wire(message)
    return message


def build_encrypted_notice(
    *,
    list_address: str,
    list_id: str,
    recipient: str,
    message_id: str,
    subject: str,
    text: str,
    crypto: Crypto,
    signer: str,
    recipient_keys: list[str],
    date: datetime | None = None,
) -> bytes:
    """The encrypted variant of a notice: subject and text only inside."""
    copy = Copy(
        list_address=list_address,
        list_id=list_id,
        recipient=recipient,
        message_id=message_id,
        subject=subject,
        payload=text_part(text),
        date=date,
    )
    return build_encrypted(copy, crypto, signer, recipient_keys)


def text_part(text: str) -> bytes:
    """A text/plain; charset=utf-8 entity, quoted-printable, CRLF, 7-bit."""
    part = MIMEPart(policy=_SMTP)
    normalised = text.replace("\r\n", "\n").replace("\r", "\n")
    part.set_content(normalised, subtype="plain", charset="utf-8", cte="quoted-printable")
    data = part.as_bytes()
    # An mbox on the way would turn "From " into ">From "; qp lets us sidestep it.
    head, sep, body = data.partition(_CRLF + _CRLF)
    return head + sep + re.sub(rb"(?m)^From ", b"=46rom ", body)


# Building blocks


def _outer_fields(
    list_address: str,
    list_id: str,
    recipient: str,
    message_id: str,
    subject: str,
    date: datetime | None,
) -> list[tuple[str, str]]:
    """The non-structural fields that travel outside, in order (also the HP-Outer set)."""
    if not _MESSAGE_ID.match(message_id):
        raise ValueError(f"not a Message-ID: {message_id!r}")
    when = date or datetime.now(UTC)
    if when.tzinfo is None:
        raise ValueError("the Date of a copy must be timezone-aware")
    fields = [
        ("From", list_address),
        ("To", recipient),
        ("Subject", subject),
        ("Date", format_datetime(when.astimezone(UTC).replace(microsecond=0))),
        ("Message-ID", message_id),
        ("List-Id", list_id),
    ]
    return [(name, _one_line(name, value)) for name, value in fields]


def _envelope(outer: list[tuple[str, str]], armour: bytes) -> bytes:
    boundary = _boundary(armour)
    version = b"Content-Type: application/pgp-encrypted\r\n"
    version += b"Content-Description: PGP/MIME version identification\r\n\r\nVersion: 1\r\n"
    data = b'Content-Type: application/octet-stream; name="encrypted.asc"\r\n'
    data += b"Content-Description: OpenPGP encrypted message\r\n"
    data += b'Content-Disposition: inline; filename="encrypted.asc"\r\n\r\n' + armour
    message = b"".join(
        [
            *(_fold(name, value) for name, value in outer),
            _fold("MIME-Version", "1.0"),
            _fold(
                "Content-Type",
                _multipart("encrypted", boundary, 'protocol="application/pgp-encrypted"'),
            ),
            _CRLF,
            PREAMBLE,
            b"--" + boundary + _CRLF + version + _CRLF,
            b"--" + boundary + _CRLF + data + _CRLF,
            b"--" + boundary + b"--" + _CRLF,
        ]
    )
    _check_wire(message)
    return message


def _armour(data: bytes) -> bytes:
    """gpg's armoured output with CRLF line ends, after checking it is one ASCII block."""
    text = data.replace(_CRLF, b"\n").strip(b"\n")
    if not (
        text.isascii()
        and text.startswith(b"-----BEGIN PGP MESSAGE-----\n")
        and text.endswith(b"\n-----END PGP MESSAGE-----")
        and text.count(b"-----BEGIN ") == 1
    ):
        raise CryptoError("GnuPG did not return one armoured OpenPGP message")
    return text.replace(b"\n", _CRLF) + _CRLF


def _multipart(subtype: str, boundary: bytes, params: str) -> str:
    return f'multipart/{subtype}; {params}; boundary="{boundary.decode()}"'


def _boundary(*contents: bytes) -> bytes:
    """A boundary that occurs in none of the parts (RFC 2046 §5.1.1)."""
    while True:
        candidate = b"=_" + secrets.token_hex(16).encode()
        if not any(candidate in content for content in contents):
            return candidate


def _fold(name: str, value: str) -> bytes:
    """One header field, RFC 2047-encoded where needed, folded at 78 columns, CRLF."""
    return _SMTP.fold_binary(name, _SMTP.header_store_parse(name, value)[1])


def _one_line(name: str, value: str) -> str:
    if any(c in value for c in "\r\n\0"):
        raise ValueError(f"{name} must be a single line without control characters")
    return value


def _structural(name: str) -> bool:
    return name.lower().startswith("content-")


def _check_entity(entity: bytes) -> None:
    """The payload must be a CRLF MIME entity: header lines (maybe none), a blank line, a body."""
    if _BARE_EOL.search(entity):
        raise ValueError("the payload must use CRLF line ends only")
    if entity.startswith(_CRLF):
        return  # no header fields at all: text/plain; charset=us-ascii (RFC 2045 §5.2)
    head, sep, _ = entity.partition(_CRLF + _CRLF)
    if not sep or not all(_HEADER_LINE.match(line) for line in head.split(_CRLF)):
        raise ValueError("the payload is not a MIME entity (header section, blank line, body)")


def _check_wire(message: bytes) -> None:
    """What leaves the relay is 7-bit with CRLF line ends (RFC 5322 §2.3)."""
    if not message.isascii() or _BARE_EOL.search(message) or b"\0" in message:
        raise ValueError("outgoing message is not 7-bit CRLF text")

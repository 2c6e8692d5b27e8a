"""Outgoing copies: the exact bytes of what one recipient receives.

Each copy is its own Cryptographic Payload, signed by the list key and encrypted to
the recipient's keys only, in one OpenPGP message (RFC 3156 §6.2): one gpg call per
copy. Signing per copy is what lets every copy carry its own reference (and its own
Message-ID) inside the signature: a leaked copy names its recipient, and no one can
alter that name without breaking the list's signature.

The real headers live only inside, on a `multipart/mixed` root marked both
`protected-headers="v1"` (Thunderbird, K-9, mutt) and `hp="cipher"` (RFC 9788), with
one `HP-Outer` line per outer field. Outside, only an allow-list travels and the
Subject is the literal `[...]` (RFC 9788 `hcp_baseline`); `To` is the list address on
every copy (inside, a notice's `To` names its one recipient), and the recipient is only
the envelope recipient.

Outside the encryption, and so outside the signature, each copy also carries the list's
`Autocrypt:` header (relay/app/list_key.py): the list's public key, for the member's
client to check the signature with. It is public, no `HP-Outer` line records it (RFC 9788
treats it as unprotected, which it is), and changing it changes nothing that was signed.

The carried payload is spliced in byte for byte: re-serialising it with the `email`
package could re-fold or re-encode what its author signed. Everything else is built
here from scratch with `policy.SMTP` (CRLF, RFC 2047, 78 columns). Crypto errors
propagate: the caller holds the delivery, never sends plaintext.
"""

from __future__ import annotations

import functools
import re
import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email import policy
from email.utils import format_datetime

from relay.app import list_key
from relay.core.crypto import Crypto
from relay.core.errors import CryptoError
from relay.core.mime import crlf_only, text_part
from relay.core.references import HEADER as REFERENCE_HEADER

OBSCURED_SUBJECT = "[...]"
PREAMBLE = b"This is an OpenPGP/MIME encrypted message (RFC 4880 and 3156)\r\n"

_SMTP = policy.SMTP
_TEXT_HEAD = (
    b'Content-Type: text/plain; charset="utf-8"\r\n'
    b"Content-Transfer-Encoding: quoted-printable\r\n\r\n"
)
_CRLF = b"\r\n"
_MESSAGE_ID = re.compile(r"^<[^<>\s@]+@[^<>\s@]+>$")
_FIELD_NAME = re.compile(r"^[!-9;-~]+$")
_HEADER_LINE = re.compile(rb"^(?:[!-9;-~]+:|[ \t])")
# Fields the relay sets itself; extra protected fields may not shadow them.
_RESERVED = {"from", "to", "cc", "bcc", "subject", "date", "message-id", "in-reply-to"}
_RESERVED |= {"references", "list-id", "hp-outer", "mime-version", REFERENCE_HEADER.lower()}


@dataclass(frozen=True)
class Copy:
    """One recipient's copy: what it says, and the fields that make it this copy."""

    list_address: str  # From, and the envelope sender
    list_id: str  # List-Id value, e.g. 'Distributors <distributors.example.org>'
    to: str  # the To field (the list address for posts; a notice's one recipient)
    message_id: str  # this copy's own Message-ID, inside and outside, e.g. '<abc@example.org>'
    subject: str  # the real subject: only ever inside the encryption
    payload: bytes  # the verified MIME entity to carry (own headers + body, CRLF)
    preface: str | None = None  # short text/plain note placed first; None = no note
    extra_protected: tuple[tuple[str, str], ...] = ()  # extra fields placed only inside
    in_reply_to: str | None = None
    reference: str | None = None  # the per-recipient reference, inside only
    date: datetime = field(default_factory=lambda: datetime.now(UTC))


def build_encrypted(copy: Copy, crypto: Crypto, signer: str, recipient_keys: list[str]) -> bytes:
    """One copy: its payload root signed by `signer`, encrypted to `recipient_keys` only."""
    outer = _outer_fields(
        copy.list_address,
        copy.list_id,
        copy.list_address,  # the real To (a notice's recipient) travels inside only
        copy.message_id,
        OBSCURED_SUBJECT,
        copy.date,
    )
    signed = crypto.sign_encrypt(payload_root(copy, outer), recipient_keys, signer)
    autocrypt = list_key.autocrypt_header(crypto, signer, copy.list_address)
    return _envelope(outer, _armoured(signed, b"MESSAGE"), autocrypt or b"")


def payload_root(copy: Copy, outer: list[tuple[str, str]]) -> bytes:
    """The Cryptographic Payload (RFC 9788): protected headers, the preface, the payload.

    `outer` are the fields sent outside, recorded inside as one `HP-Outer` line each; inside,
    the real Subject and To stand in for theirs."""
    _check_entity(copy.payload)
    real = {"Subject": _one_line("Subject", copy.subject), "To": _one_line("To", copy.to)}
    protected = [(name, real.get(name, value)) for name, value in outer]
    if copy.in_reply_to is not None:
        protected.append(("In-Reply-To", _one_line("In-Reply-To", copy.in_reply_to)))
    if copy.reference is not None:
        protected.append((REFERENCE_HEADER, _one_line(REFERENCE_HEADER, copy.reference)))
    for name, value in copy.extra_protected:
        if not _FIELD_NAME.match(name) or name.lower() in _RESERVED or _structural(name):
            raise ValueError(f"not allowed as an extra protected field: {name!r}")
        protected.append((name, _one_line(name, value)))
    protected += [("HP-Outer", f"{name}: {value}") for name, value in outer]

    parts = [copy.payload] if copy.preface is None else [text_part(copy.preface), copy.payload]
    boundary = _boundary(*parts)
    return b"".join(
        [
            # Written directly: the boundary is fresh per copy, so folding would never be cached.
            b'Content-Type: multipart/mixed; protected-headers="v1"; hp="cipher";\r\n'
            b' boundary="' + boundary + b'"\r\n',
            *(_fold(name, value) for name, value in protected),
            _CRLF,
            *(b"--" + boundary + _CRLF + part + _CRLF for part in parts),
            b"--" + boundary + b"--" + _CRLF,
        ]
    )


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
        to=recipient,
        message_id=message_id,
        subject=subject,
        payload=text_part(text),
        date=date or datetime.now(UTC),
    )
    return build_encrypted(copy, crypto, signer, recipient_keys)


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


def _envelope(outer: list[tuple[str, str]], armour: bytes, unprotected: bytes = b"") -> bytes:
    """The outer message: `outer` (folded), the `unprotected` fields as given (folded and
    CRLF-terminated already), then the PGP/MIME structure around `armour`."""
    boundary = _boundary(armour)
    version = b"Content-Type: application/pgp-encrypted\r\n"
    version += b"Content-Description: PGP/MIME version identification\r\n\r\nVersion: 1\r\n"
    data = b'Content-Type: application/octet-stream; name="encrypted.asc"\r\n'
    data += b"Content-Description: OpenPGP encrypted message\r\n"
    data += b'Content-Disposition: inline; filename="encrypted.asc"\r\n\r\n' + armour
    message = b"".join(
        [
            *(_fold(name, value) for name, value in outer),
            unprotected,
            _fold("MIME-Version", "1.0"),
            # Written directly: the boundary is fresh per copy, so folding would never be cached.
            b'Content-Type: multipart/encrypted; protocol="application/pgp-encrypted";\r\n'
            b' boundary="' + boundary + b'"\r\n',
            _CRLF,
            PREAMBLE,
            b"--" + boundary + _CRLF + version + _CRLF,
            b"--" + boundary + _CRLF + data + _CRLF,
            b"--" + boundary + b"--" + _CRLF,
        ]
    )
    _check_wire(message)
    return message


def _armoured(data: bytes, kind: bytes) -> bytes:
    """gpg's armoured output with CRLF line ends, after checking it is one ASCII block."""
    text = data.replace(_CRLF, b"\n").strip(b"\n")
    if not (
        text.isascii()
        and text.startswith(b"-----BEGIN PGP " + kind + b"-----\n")
        and text.endswith(b"\n-----END PGP " + kind + b"-----")
        and text.count(b"-----BEGIN ") == 1
    ):
        raise CryptoError(
            f"the OpenPGP backend did not return one armoured OpenPGP {kind.decode().lower()}"
        )
    return text.replace(b"\n", _CRLF) + _CRLF


def _boundary(*contents: bytes) -> bytes:
    """A boundary that occurs in none of the parts (RFC 2046 §5.1.1)."""
    while True:
        candidate = b"=_" + secrets.token_hex(16).encode()
        if not any(candidate in content for content in contents):
            return candidate


@functools.lru_cache(maxsize=1024)
def _fold(name: str, value: str) -> bytes:
    """One header field, RFC 2047-encoded where needed, folded at 78 columns, CRLF.

    Cached: every copy of a message repeats the same fields, and the email
    package's folding is the slowest step of sealing a copy.
    """
    return _SMTP.fold_binary(name, _SMTP.header_store_parse(name, value)[1])


def _one_line(name: str, value: str) -> str:
    if any(c in value for c in "\r\n\0"):
        raise ValueError(f"{name} must be a single line without control characters")
    return value


def _structural(name: str) -> bool:
    return name.lower().startswith("content-")


def _check_entity(entity: bytes) -> None:
    """The payload must be a CRLF MIME entity: header lines (maybe none), a blank line, a body."""
    if not crlf_only(entity):
        raise ValueError("the payload must use CRLF line ends only")
    if entity.startswith(_CRLF):
        return  # no header fields at all: text/plain; charset=us-ascii (RFC 2045 §5.2)
    head, sep, _ = entity.partition(_CRLF + _CRLF)
    if not sep or not all(_HEADER_LINE.match(line) for line in head.split(_CRLF)):
        raise ValueError("the payload is not a MIME entity (header section, blank line, body)")


def _check_wire(message: bytes) -> None:
    """What leaves the relay is 7-bit with CRLF line ends (RFC 5322 §2.3)."""
    if not message.isascii() or not crlf_only(message) or b"\0" in message:
        raise ValueError("outgoing message is not 7-bit CRLF text")

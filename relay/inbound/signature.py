"""Which posts count as signed, by whom, and exactly what gets redistributed.

Accepted, and nothing else: a PGP/MIME multipart/signed that is the whole post
(RFC 3156 §5); a text/plain body that is one cleartext signature and nothing
more (RFC 4880 §7); either of those inside PGP/MIME encryption to the list key
(RFC 3156 §6.1); one OpenPGP message both signed and encrypted (§6.2). A
signature over part of a post says nothing about the rest, so partial signing is
refused rather than trimmed.

Signed bytes come from the raw message or from gpg's plaintext, never from a
re-serialised part: the email package refolds headers on output, which breaks
genuine signatures and could make gpg check bytes other than those members read.
Only gpg's status lines decide (`relay.crypto.Signature`); keys are never fetched.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from email import policy
from email.message import EmailMessage, MIMEPart
from email.parser import BytesParser
from email.utils import collapse_rfc2231_value
from itertools import islice
from typing import cast

from relay.core.crypto import Crypto, Signature
from relay.core.errors import CryptoError
from relay.inbound import freshness
from relay.inbound.shallow import read_top
from relay.inbound.wire import Rejection, check_wire

_CLEARSIGN_MARKERS = [
    "-----BEGIN PGP SIGNED MESSAGE-----",
    "-----BEGIN PGP SIGNATURE-----",
    "-----END PGP SIGNATURE-----",
]
_ARMOUR_LINE = re.compile(r"(?m)^-----(?:BEGIN|END) PGP [^\r\n]*")
_OUTSIDE_WHITESPACE = " \t\r\n"  # ASCII only: str.strip() would also eat U+00A0 and friends
_LINE_END = re.compile(rb"\r?\n")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")


@dataclass(frozen=True)
class VerifiedPost:
    signer: str  # primary-key fingerprint from gpg's VALIDSIG, upper-case hex
    payload: bytes  # complete MIME entity with CRLF line ends: what the signature covered
    subject: str  # the protected Subject of the signed payload if marked so, else ""
    form: str  # pgp-mime | inline | encrypted/pgp-mime | encrypted/inline | encrypted/combined
    signed_at: datetime  # the signature's creation time, as the signature states it
    identity: str  # who signed what when (relay/inbound/freshness.py): believed once
    # The signed payload's own header fields when its root is marked as carrying
    # protected headers (RFC 9788), lower-case names; empty otherwise.
    protected: dict[str, str] = field(default_factory=dict)


def verify_post(
    raw: bytes,
    message: EmailMessage,
    crypto: Crypto,
    is_authorised: Callable[[str], bool],
) -> VerifiedPost:
    """Verify a post read by `shallow.read_top` (admission.py); raise `Rejection` if unfit."""
    if message.get_content_type() == "multipart/encrypted":
        signature, signed, payload, form = _verify_encrypted(message, crypto)
    else:
        signature, signed, payload, form = _verify_signed(raw, message, crypto)
    signer = signature.fingerprint
    if signer is None or signature.created_at is None:  # _valid refused those already
        raise Rejection(550, "5.7.1", "signature not accepted")
    if not is_authorised(signer):
        raise Rejection(
            550, "5.7.1", f"the signing key {signer} is not authorised to post to this list"
        )
    protected = _protected_headers(payload)
    return VerifiedPost(
        signer,
        payload,
        protected.get("subject", ""),
        form,
        signature.created_at,
        freshness.identity(signer, signature.created_at, signed),
        protected,
    )


# What verification yields: the signature, the exact bytes it covers, the payload to
# redistribute (an entity with CRLF line ends) and the form of the post.
_Verified = tuple[Signature, bytes, bytes, str]


def _verify_signed(raw: bytes, message: EmailMessage, crypto: Crypto) -> _Verified:
    content_type = message.get_content_type()
    if content_type == "multipart/signed":
        signature, signed = _verify_pgp_mime(raw, message, crypto)
        return signature, signed, signed, "pgp-mime"
    if content_type == "text/plain":
        signature, signed_text, entity = _verify_inline(message, crypto)
        return signature, signed_text, entity, "inline"
    raise _unsigned(message)


def _verify_pgp_mime(raw: bytes, message: EmailMessage, crypto: Crypto) -> tuple[Signature, bytes]:
    if _param(message, "protocol") != "application/pgp-signature":
        raise Rejection(550, "5.7.1", "only OpenPGP signatures (application/pgp-signature) count")
    parts = cast(list[EmailMessage], message.get_payload())
    if len(parts) != 2 or parts[1].get_content_type() != "application/pgp-signature":
        raise Rejection(
            550, "5.7.1", "a signed post must have exactly two parts: the content and its signature"
        )
    signed = _first_part(raw, message.get_boundary() or "")
    signature = cast(bytes, parts[1].get_payload(decode=True))
    return _valid(crypto.verify_detached(signed, signature)), signed


def _first_part(raw: bytes, boundary: str) -> bytes:
    """The first body part exactly as sent: from after the CRLF ending the first
    delimiter line to before the CRLF that starts the next one (RFC 2046 §5.1.1).

    The delimiter pattern is the email package's own (transport padding allowed),
    so these bytes are the part that the full parse (check_structure) finds.
    """
    # The header section ends at the first empty line (the pre-scan refused any other end).
    body = raw[2:] if raw.startswith(b"\r\n") else raw.partition(b"\r\n\r\n")[2]
    delimiter = re.compile(
        rb"(?:\A|(?<=\r\n))--" + re.escape(boundary.encode("ascii")) + rb"(--)?[ \t]*(?:\r\n|\Z)"
    )
    found = list(islice(delimiter.finditer(body), 3))
    if len(found) < 3 or found[0][1] or found[1][1] or not found[2][1]:
        raise Rejection(550, "5.7.1", "the signed part cannot be located in the message")
    start, end = found[0].end(), found[1].start() - 2
    if end <= start:
        raise Rejection(550, "5.7.1", "the signed part is empty")
    return body[start:end]


def _verify_inline(message: EmailMessage, crypto: Crypto) -> tuple[Signature, bytes, bytes]:
    charset = message.get_content_charset("us-ascii")
    text = _decode(cast(bytes, message.get_payload(decode=True)), charset)
    block = text.strip(_OUTSIDE_WHITESPACE)
    markers = [line.rstrip() for line in _ARMOUR_LINE.findall(block)]
    whole = (
        markers == _CLEARSIGN_MARKERS
        and block.startswith(_CLEARSIGN_MARKERS[0])
        and block.endswith(_CLEARSIGN_MARKERS[-1])
    )
    if not whole:
        if _CLEARSIGN_MARKERS[0] in text:
            raise Rejection(
                550, "5.7.1", "the body must be one inline signature with no text outside it"
            )
        raise _unsigned(message)
    signature, signed_text = crypto.verify_cleartext(block.encode(charset))
    signature = _valid(signature)
    # Redistribute what gpg says was signed, never the text around the armour.
    entity = MIMEPart(policy=policy.SMTP)
    entity.set_content(
        _decode(signed_text, charset).replace("\r\n", "\n"),
        charset="utf-8",
        cte="quoted-printable",
    )
    return signature, signed_text, entity.as_bytes()


def _verify_encrypted(message: EmailMessage, crypto: Crypto) -> _Verified:
    if _param(message, "protocol") != "application/pgp-encrypted":
        raise Rejection(550, "5.7.1", "only OpenPGP encryption (application/pgp-encrypted) counts")
    parts = cast(list[EmailMessage], message.get_payload())
    if (
        len(parts) != 2
        or parts[0].get_content_type() != "application/pgp-encrypted"
        or parts[1].get_content_type() != "application/octet-stream"
        or cast(bytes, parts[0].get_payload(decode=True)).strip() != b"Version: 1"
    ):
        raise Rejection(
            550, "5.7.1", "an encrypted post must have two parts: 'Version: 1' and the ciphertext"
        )
    try:
        decrypted = crypto.decrypt(cast(bytes, parts[1].get_payload(decode=True)))
    except CryptoError as exc:
        raise Rejection(550, "5.7.5", f"cannot decrypt the post: {exc}") from None
    plaintext = _LINE_END.sub(b"\r\n", decrypted.plaintext)  # RFC 3156 canonical form
    check_wire(plaintext)
    inner = read_top(plaintext)  # unauthenticated still: the top level only
    if decrypted.signature is not None:  # combined (RFC 3156 §6.2): signs the whole entity
        return _valid(decrypted.signature), plaintext, plaintext, "encrypted/combined"
    if inner.get_content_type() == "multipart/encrypted":
        raise Rejection(550, "5.7.1", "nested encryption is not accepted")
    signature, signed, payload, form = _verify_signed(plaintext, inner, crypto)
    return signature, signed, payload, f"encrypted/{form}"


def _valid(signature: Signature) -> Signature:
    """The signature if gpg judged it good (with its signer and creation time), else refuse."""
    if signature.valid and signature.fingerprint and signature.created_at:
        return signature
    if signature.code == "BADSIG":
        raise Rejection(550, "5.7.7", f"bad signature: {signature.reason}")
    raise Rejection(550, "5.7.1", f"signature not accepted: {signature.reason}")


def _unsigned(message: EmailMessage) -> Rejection:
    signed_types = {"multipart/signed", "application/pgp-signature", "multipart/encrypted"}
    if any(part.get_content_type() in signed_types for part in message.walk()):
        return Rejection(
            550, "5.7.1", "only part of the post is signed; the signature must cover all of it"
        )
    return Rejection(550, "5.7.1", "the post is not signed; sign it with OpenPGP")


def _protected_headers(payload: bytes) -> dict[str, str]:
    """The header fields of the signed payload's root when it is marked as carrying
    protected headers (RFC 9788 `hp`, or the older protected-headers="v1"); else none.

    The outer header section is never read: nothing signs it. A field given twice
    inside counts for nothing (two readers could pick different ones)."""
    root = BytesParser(policy=policy.default).parsebytes(payload, True)
    marked = _param(root, "hp") in ("clear", "cipher") or _param(root, "protected-headers") == "v1"
    if not marked:
        return {}
    names = [name.lower() for name in root]
    found: dict[str, str] = {}
    for name in dict.fromkeys(names):
        if name.startswith("content-") or names.count(name) != 1:
            continue
        try:
            value = str(root.get(name, ""))
        except (ValueError, IndexError):  # a header the parser chokes on says nothing
            continue
        found[name] = " ".join(_CONTROL.sub(" ", value).split())[:998]
    return found


def _param(part: EmailMessage, name: str) -> str:
    value = part.get_param(name, "")
    return collapse_rfc2231_value(value).strip().lower()


def _decode(data: bytes, charset: str) -> str:
    try:
        return data.decode(charset)
    except (LookupError, UnicodeError):
        raise Rejection(554, "5.6.0", "text not valid in its declared charset") from None

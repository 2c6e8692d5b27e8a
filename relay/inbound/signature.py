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
from dataclasses import dataclass
from email import policy
from email.message import EmailMessage, MIMEPart
from email.parser import BytesParser
from email.utils import collapse_rfc2231_value
from itertools import islice
from typing import cast

from relay.crypto import Crypto, Signature
from relay.errors import CryptoError
from relay.inbound.structure import check_structure
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
    subject: str  # protected Subject from the signed payload if marked so, else the outer one
    form: str  # pgp-mime | inline | encrypted/pgp-mime | encrypted/inline | encrypted/combined


def verify_post(
    raw: bytes,
    message: EmailMessage,
    crypto: Crypto,
    is_authorised: Callable[[str], bool],
) -> VerifiedPost:
    """Verify a post that passed `check_wire` and `check_structure`; raise `Rejection` if unfit."""
    if message.get_content_type() == "multipart/encrypted":
        signer, payload, form = _verify_encrypted(message, crypto)
    else:
        signer, payload, form = _verify_signed(raw, message, crypto)
    if not is_authorised(signer):
        raise Rejection(
            550, "5.7.1", f"the signing key {signer} is not authorised to post to this list"
        )
    return VerifiedPost(signer, payload, _subject(payload, message), form)


def _verify_signed(raw: bytes, message: EmailMessage, crypto: Crypto) -> tuple[str, bytes, str]:
    content_type = message.get_content_type()
    if content_type == "multipart/signed":
        return *_verify_pgp_mime(raw, message, crypto), "pgp-mime"
    if content_type == "text/plain":
        return *_verify_inline(message, crypto), "inline"
    raise _unsigned(message)


def _verify_pgp_mime(raw: bytes, message: EmailMessage, crypto: Crypto) -> tuple[str, bytes]:
    if _param(message, "protocol") != "application/pgp-signature":
        raise Rejection(550, "5.7.1", "only OpenPGP signatures (application/pgp-signature) count")
    parts = cast(list[EmailMessage], message.get_payload())
    if len(parts) != 2 or parts[1].get_content_type() != "application/pgp-signature":
        raise Rejection(
            550, "5.7.1", "a signed post must have exactly two parts: the content and its signature"
        )
    signed = _first_part(raw, message.get_boundary() or "")
    signature = cast(bytes, parts[1].get_payload(decode=True))
    return _signer(crypto.verify_detached(signed, signature)), signed


def _first_part(raw: bytes, boundary: str) -> bytes:
    """The first body part exactly as sent: from after the CRLF ending the first
    delimiter line to before the CRLF that starts the next one (RFC 2046 §5.1.1).

    The delimiter pattern is the email package's own (transport padding allowed),
    so these bytes are the part that `check_structure` parsed.
    """
    # The header section ends at the first empty line (check_structure refused any other end).
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


def _verify_inline(message: EmailMessage, crypto: Crypto) -> tuple[str, bytes]:
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
    signer = _signer(signature)
    # Redistribute what gpg says was signed, never the text around the armour.
    entity = MIMEPart(policy=policy.SMTP)
    entity.set_content(
        _decode(signed_text, charset).replace("\r\n", "\n"),
        charset="utf-8",
        cte="quoted-printable",
    )
    return signer, entity.as_bytes()


def _verify_encrypted(message: EmailMessage, crypto: Crypto) -> tuple[str, bytes, str]:
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
    inner = check_structure(plaintext)
    if decrypted.signature is not None:  # combined (RFC 3156 §6.2): signs the whole entity
        return _signer(decrypted.signature), plaintext, "encrypted/combined"
    if inner.get_content_type() == "multipart/encrypted":
        raise Rejection(550, "5.7.1", "nested encryption is not accepted")
    signer, payload, form = _verify_signed(plaintext, inner, crypto)
    return signer, payload, f"encrypted/{form}"


def _signer(signature: Signature) -> str:
    if signature.valid and signature.fingerprint:
        return signature.fingerprint
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


def _subject(payload: bytes, message: EmailMessage) -> str:
    """The Subject inside the signed payload when its root is marked as carrying
    protected headers (RFC 9788 `hp`, or the older protected-headers="v1"), else the
    outer, unauthenticated one."""
    root = cast(EmailMessage, BytesParser(policy=policy.default).parsebytes(payload, True))
    marked = _param(root, "hp") in ("clear", "cipher") or _param(root, "protected-headers") == "v1"
    source = root if marked and "subject" in root else message
    return _CONTROL.sub(" ", str(source.get("subject", ""))).strip()


def _param(part: EmailMessage, name: str) -> str:
    value = part.get_param(name, "")
    return collapse_rfc2231_value(value).strip().lower()


def _decode(data: bytes, charset: str) -> str:
    try:
        return data.decode(charset)
    except (LookupError, UnicodeError):
        raise Rejection(554, "5.6.0", "text not valid in its declared charset") from None

"""Build real signed (and encrypted) posts the way a mail client would."""

from __future__ import annotations

import email.utils
import secrets

from tests.support.keys import Keyring

CRLF = b"\r\n"


def crlf(data: bytes) -> bytes:
    return data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def text_entity(
    body: str, subject: str | None = None, protected: dict[str, str] | None = None
) -> bytes:
    """A text/plain MIME entity (headers + body), quoted-printable, CRLF line ends; with a
    `subject` or other `protected` fields (In-Reply-To, say), they are carried as protected
    headers (RFC 9788), inside the signature, as header-protecting clients do."""
    import quopri

    headers = (
        b'Content-Type: text/plain; charset="utf-8"\r\n'
        b"Content-Transfer-Encoding: quoted-printable\r\n"
    )
    fields = {**({"Subject": subject} if subject is not None else {}), **(protected or {})}
    if fields:
        headers = (
            "".join(f"{name}: {value}\r\n" for name, value in fields.items()).encode()
            + b'Content-Type: text/plain; charset="utf-8"; protected-headers="v1"\r\n'
            b"Content-Transfer-Encoding: quoted-printable\r\n"
        )
    encoded = quopri.encodestring(body.encode("utf-8"))
    return headers + CRLF + crlf(encoded)


def _outer(subject: str, sender: str, to: str) -> bytes:
    return crlf(
        (
            f"From: {sender}\nTo: {to}\nSubject: {subject}\n"
            f"Date: {email.utils.formatdate(usegmt=True)}\n"
            f"Message-ID: <{secrets.token_hex(8)}@example.net>\nMIME-Version: 1.0\n"
        ).encode()
    )


def pgp_mime_signed(
    keyring: Keyring,
    signer: str,
    entity: bytes,
    *,
    subject: str,
    sender: str,
    to: str,
    signed_at: int | None = None,
) -> bytes:
    """multipart/signed (RFC 3156) over exactly `entity`; `signed_at` dates the signature."""
    boundary = "sig-" + secrets.token_hex(8)
    signature = keyring.detach_sign(entity, signer, at=signed_at)
    assert signature.startswith(b"-----BEGIN PGP SIGNATURE-----"), signature
    return (
        _outer(subject, sender, to)
        + crlf(
            (
                "Content-Type: multipart/signed; micalg=pgp-sha512;\n"
                f' protocol="application/pgp-signature"; boundary="{boundary}"\n\n'
            ).encode()
        )
        + f"--{boundary}\r\n".encode()
        + entity
        + f"\r\n--{boundary}\r\n".encode()
        + b'Content-Type: application/pgp-signature; name="signature.asc"\r\n\r\n'
        + crlf(signature)
        + f"\r\n--{boundary}--\r\n".encode()
    )


def clearsigned(
    keyring: Keyring, signer: str, body: str, *, subject: str, sender: str, to: str
) -> bytes:
    signed = keyring.clearsign(body.encode(), signer)
    assert signed.startswith(b"-----BEGIN PGP SIGNED MESSAGE-----"), signed
    return (
        _outer(subject, sender, to)
        + b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 7bit\r\n\r\n"
        + crlf(signed)
    )


def encrypted(
    keyring: Keyring,
    inner: bytes,
    recipients: list[str],
    *,
    subject: str,
    sender: str,
    to: str,
    signer: str | None = None,
) -> bytes:
    """multipart/encrypted (RFC 3156) around `inner`, optionally signed in the same message."""
    boundary = "enc-" + secrets.token_hex(8)
    if signer:
        armour = keyring.sign_encrypt(inner, signer, recipients)
    else:
        armour = keyring.encrypt(inner, recipients)
    assert armour.startswith(b"-----BEGIN PGP MESSAGE-----"), armour
    return (
        _outer(subject, sender, to)
        + crlf(
            (
                'Content-Type: multipart/encrypted; protocol="application/pgp-encrypted";\n'
                f' boundary="{boundary}"\n\n'
                f"--{boundary}\nContent-Type: application/pgp-encrypted\n\nVersion: 1\n\n"
                f"--{boundary}\nContent-Type: application/octet-stream;"
                ' name="encrypted.asc"\n\n'
            ).encode()
        )
        + crlf(armour)
        + f"\r\n--{boundary}--\r\n".encode()
    )


def decoded_text(entity: bytes) -> str:
    """All text/plain leaves of a MIME entity, transfer-decoded and joined."""
    import email
    import email.policy

    message = email.message_from_bytes(entity, policy=email.policy.default)
    return "\n".join(
        part.get_content() for part in message.walk() if part.get_content_type() == "text/plain"
    )


class OpenedCopy:
    """A relay copy as its recipient's mail client sees it: decrypted, signature checked.

    The relay signs and encrypts each copy in one OpenPGP message (RFC 3156 §6.2): the
    decrypted bytes are the protected root itself, and gpg reports the signature over
    exactly those bytes while decrypting."""

    def __init__(self, keyring: Keyring, data: bytes) -> None:
        import email
        import email.policy

        self.outer = email.message_from_bytes(data, policy=email.policy.default)
        plaintext, status = keyring.decrypt(data)
        self.decrypt_status = status
        words = [s[0] for s in status]
        self.decrypted = "DECRYPTION_OKAY" in words
        self.enc_to = [s[1] for s in status if s[0] == "ENC_TO"]
        self.signer: str | None = None
        self.root_bytes = b""
        if not self.decrypted:
            return
        valid = [s for s in status if s[0] == "VALIDSIG"]
        if "GOODSIG" in words and len(valid) == 1 and "BADSIG" not in words:
            self.signer = valid[0][-1]
        self.root_bytes = plaintext
        self.root = email.message_from_bytes(plaintext, policy=email.policy.default)

    @property
    def text(self) -> str:
        return "\n".join(
            p.get_content() for p in self.root.walk() if p.get_content_type() == "text/plain"
        )

    @property
    def reference(self) -> str | None:
        return self.root["X-Copy-Reference"]

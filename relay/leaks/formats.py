"""What bytes are, by their armour or magic number rather than their label: OpenPGP and
S/MIME signatures, keys and encrypted data, images, and the formats no reader here opens.
"""

from __future__ import annotations

import re
from collections.abc import Callable

__all__ = [
    "ARMOUR",
    "PGP_MESSAGE",
    "SIGNED_TYPES",
    "is_encrypted_packet",
    "is_image",
    "is_signature",
    "unreadable_format",
]

PGP_MESSAGE = re.compile(r"-----BEGIN PGP MESSAGE-----")
# Armoured signatures and keys, anywhere in a part: the rest of the part is still read.
ARMOUR = {
    "OpenPGP signature": re.compile(
        rb"-----BEGIN PGP SIGNATURE-----.*?-----END PGP SIGNATURE-----[ \t]*\r?\n?", re.S
    ),
    "OpenPGP public key": re.compile(
        rb"-----BEGIN PGP PUBLIC KEY BLOCK-----.*?-----END PGP PUBLIC KEY BLOCK-----"
        rb"[ \t]*\r?\n?",
        re.S,
    ),
}
# Content types of the parts not scanned when they really are what they claim: the kind.
SIGNED_TYPES = {
    "application/pgp-signature": "OpenPGP signature",
    "application/pgp-keys": "OpenPGP public key",
    "application/pkcs7-signature": "S/MIME signature",
    "application/x-pkcs7-signature": "S/MIME signature",
}


def _packet_tag(data: bytes) -> int | None:
    """The tag of the OpenPGP packet binary ``data`` starts with, if it looks like one."""
    if not data or not data[0] & 0x80:
        return None
    first = data[0]
    return first & 0x3F if first & 0x40 else (first >> 2) & 0x0F


_BINARY_SIGNATURE: dict[str, Callable[[bytes], bool]] = {
    "OpenPGP signature": lambda data: _packet_tag(data) == 2,
    "OpenPGP public key": lambda data: _packet_tag(data) == 6,
    "S/MIME signature": lambda data: data[:1] == b"\x30",  # a DER SEQUENCE
}
_IMAGES = (
    b"\x89PNG\r\n\x1a\n",
    b"\xff\xd8\xff",
    b"GIF87a",
    b"GIF89a",
    b"BM",
    b"II*\x00",
    b"MM\x00*",
    b"\x00\x00\x01\x00",  # ICO
)
_UNREADABLE_FORMATS = (
    (b"%PDF-", "a PDF document"),
    (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1", "an OLE document (old Office, or encrypted Office)"),
    (b"7z\xbc\xaf\x27\x1c", "a 7z archive"),
    (b"Rar!\x1a\x07", "a RAR archive"),
    (b"\x28\xb5\x2f\xfd", "zstd-compressed data"),
)


def is_signature(kind: str, data: bytes) -> bool:
    """Whether binary ``data`` is a signature or key of ``kind`` (a value of SIGNED_TYPES)."""
    return _BINARY_SIGNATURE[kind](data)


def is_encrypted_packet(data: bytes) -> bool:
    """Whether ``data`` starts with an OpenPGP encrypted-session-key or encrypted-data packet."""
    return _packet_tag(data) in (1, 3, 18, 20)


def is_image(data: bytes) -> bool:
    return data.startswith(_IMAGES) or (data[:4] == b"RIFF" and data[8:12] == b"WEBP")


def unreadable_format(data: bytes) -> str | None:
    """What a document or archive format no reader here opens is ("a PDF document")."""
    for magic, what in _UNREADABLE_FORMATS:
        if data.startswith(magic):
            return what
    return None

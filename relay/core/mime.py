"""MIME building blocks shared by the relay's own notices and every copy."""

from __future__ import annotations

import binascii
import re

_CRLF = b"\r\n"
_TEXT_HEAD = (
    b'Content-Type: text/plain; charset="utf-8"\r\n'
    b"Content-Transfer-Encoding: quoted-printable\r\n\r\n"
)


def text_part(text: str) -> bytes:
    """A text/plain; charset=utf-8 entity, quoted-printable, CRLF, 7-bit.

    binascii's encoder (in C) rather than the email package: every copy has its own
    preface, so this runs once per copy."""
    normalised = text.replace("\r\n", "\n").replace("\r", "\n")
    if not normalised.endswith("\n"):
        normalised += "\n"
    body = binascii.b2a_qp(normalised.encode("utf-8"), istext=True).replace(b"\n", _CRLF)
    # An mbox on the way would turn "From " into ">From "; qp lets us sidestep it.
    return _TEXT_HEAD + re.sub(rb"(?m)^From ", b"=46rom ", body)


def crlf_only(data: bytes) -> bool:
    """No CR or LF outside a CRLF pair: counted, not searched, as copies run to megabytes
    (a regex with a look-behind costs more than signing them)."""
    pairs = data.count(_CRLF)
    return data.count(b"\r") == pairs and data.count(b"\n") == pairs

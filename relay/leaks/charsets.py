"""Bytes as text, on their own evidence rather than their label.

A charset that is missing, unknown or wrong is no reason to skip a part: a byte order mark
first, then the declared charset, then UTF-8, then a detector (charset-normalizer), then
Latin-1, which decodes anything. Bytes of any other label are text when they decode to
mostly printable characters.
"""

from __future__ import annotations

import codecs
import re

import charset_normalizer

__all__ = ["decode_text", "sniff_text"]

_SNIFF = 64 * 1024  # bytes of a part looked at to decide whether it is text
_MIN_PRINTABLE = 0.95  # share of characters that must be printable for bytes to be text
_UNPRINTABLE = re.compile(r"[\x00-\x08\x0e-\x1f\x7f-\x9f\ufffd]")
_SINGLE_BYTE = re.compile(r"^(?:iso8859|latin|cp125\d|cp437|cp850|koi8|mac|ascii|us-ascii)")


def _bom(data: bytes) -> str | None:
    if data.startswith(codecs.BOM_UTF8):
        return "utf-8-sig"
    if data.startswith((codecs.BOM_UTF32_LE, codecs.BOM_UTF32_BE)):
        return "utf-32"
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return "utf-16"
    return None


def _utf16_without_bom(data: bytes) -> str | None:
    """UTF-16 text of mostly ASCII letters has a zero in every other byte."""
    sample = data[:_SNIFF]
    if len(sample) < 4:
        return None
    even, odd = sample[0::2].count(0), sample[1::2].count(0)
    half = len(sample) // 2
    if odd > 0.4 * half and even < 0.05 * half:
        return "utf-16-le"
    if even > 0.4 * half and odd < 0.05 * half:
        return "utf-16-be"
    return None


def decode_text(data: bytes, charset: str | None) -> str:
    """Text from bytes that should be text: never fails, never skips."""
    bom = _bom(data) or _utf16_without_bom(data)
    if bom:
        return data.decode(bom, "replace")
    if charset:
        try:
            codec = codecs.lookup(charset).name
            text = data.decode(codec)
        except (LookupError, UnicodeDecodeError):
            pass
        else:
            # UTF-8 labelled as a single-byte charset: real Latin-1 text almost never forms
            # valid UTF-8 sequences, so such bytes are UTF-8 whatever the label says.
            if _SINGLE_BYTE.match(codec) and not data.isascii():
                try:
                    return data.decode("utf-8")
                except UnicodeDecodeError:
                    pass
            return text
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        pass
    guess = charset_normalizer.from_bytes(data[: 4 * _SNIFF]).best()
    if guess is not None and guess.encoding:
        try:
            return data.decode(guess.encoding, "replace")
        except LookupError:
            pass
    return data.decode("latin-1")


def sniff_text(data: bytes) -> str | None:
    """The text in bytes of any label, if they are text: decoded and mostly printable."""
    if not data:
        return ""
    encoding = _bom(data) or _utf16_without_bom(data)
    if encoding is None and b"\x00" in data[:_SNIFF]:
        return None
    text = data.decode(encoding, "replace") if encoding else decode_text(data, None)
    sample = text[:_SNIFF]
    if len(_UNPRINTABLE.findall(sample)) > (1 - _MIN_PRINTABLE) * len(sample):
        return None
    return text

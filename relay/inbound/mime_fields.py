"""The two header fields the pre-scan (prescan.py) reads, in their plain form only.

They are the fields the standard library's parser reads to split and decode a post, and
whose header objects the signature check builds; its header parser is slower than linear
on some values (a few kilobytes of comments or parameters in one Content-Type). So a
Content-Type must be `type/subtype; name=value ...` (no comments, at most
MAX_PARAMETERS parameters, MAX_MIME_FIELD octets) and a Content-Transfer-Encoding one
word, both checked before any header parse; `media_of` then reads the media type and
boundary as the standard library will.
"""

from __future__ import annotations

import re

from relay.inbound.wire import malformed, printable

MAX_MIME_FIELD = 1000  # octets in a Content-Type or Content-Transfer-Encoding value
MAX_PARAMETERS = 16  # parameters of one Content-Type

_TOKEN = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_QUOTED = rb'"(?:[^"\\]|\\.)*"'
_PARAMETER = rb";[ \t]*(" + _TOKEN + rb")[ \t]*=[ \t]*(" + _TOKEN + rb"|" + _QUOTED + rb")[ \t]*"
_CONTENT_TYPE = re.compile(
    rb"[ \t]*(" + _TOKEN + rb"/" + _TOKEN + rb")[ \t]*((?:" + _PARAMETER + rb")*);?[ \t]*",
    re.DOTALL,
)
_PARAMETERS = re.compile(_PARAMETER, re.DOTALL)
_ONE_WORD = re.compile(rb"[ \t]*" + _TOKEN + rb"[ \t]*")


def check_transfer_encoding(value: bytes) -> None:
    """Refuse a Content-Transfer-Encoding value (unfolded) that is not one word."""
    if len(value) > MAX_MIME_FIELD or not _ONE_WORD.fullmatch(value):
        shown = printable(value.decode("latin-1").strip(" \t"), 40)
        raise malformed(f"unknown Content-Transfer-Encoding {shown!r}")


def check_content_type(value: bytes) -> None:
    """Refuse a Content-Type value (unfolded) that is not of the plain form."""
    if (
        len(value) > MAX_MIME_FIELD
        or not _CONTENT_TYPE.fullmatch(value)
        or len(_PARAMETERS.findall(value)) > MAX_PARAMETERS
    ):
        raise malformed(
            "a Content-Type not of the plain form 'type/subtype; name=value' "
            f"(no comments, at most {MAX_PARAMETERS} parameters, {MAX_MIME_FIELD} octets)"
        )


def media_of(value: bytes | None, default: bytes) -> tuple[bytes, bytes | None]:
    """The media type and boundary the standard library reads from a (plain-form)
    Content-Type value: the text before the first `;`, lower-cased, else `text/plain`
    when it has not exactly one `/`; the first `boundary` parameter, unquoted."""
    if value is None:
        return default, None
    media = value.partition(b";")[0].strip(b" \t").lower()
    if media.count(b"/") != 1:
        media = b"text/plain"
    boundary = None
    for name, raw in _PARAMETERS.findall(value):
        if name.lower() == b"boundary":
            if raw.startswith(b'"'):
                raw = raw[1:-1].replace(b"\\\\", b"\\").replace(b'\\"', b'"')
            boundary = raw.rstrip()
            break
    return media, boundary

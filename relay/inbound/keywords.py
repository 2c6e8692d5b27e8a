"""Keywords in a signed post: which advisory it belongs to and when its embargo ends.

An SRC sender declares them as header fields of the signed entity or, as
Schleuder's users do, as lines at the very top of the first text/plain part:

    X-Advisory: CVE-2026-1234
    X-Embargo-Until: 2026-12-01 16:00 UTC

Only the verified payload is read (never the unsigned outer headers), and the
keywords are stripped from what members receive. Stripping works on the bytes:
the rest of the entity, including every other part, is kept byte for byte;
only a base64 body that loses keyword lines is re-encoded. The payload changes,
which is fine because the list signs each copy itself.
"""

from __future__ import annotations

import binascii
import codecs
import re
from collections.abc import Iterator
from dataclasses import dataclass
from email import policy
from email.header import decode_header, make_header
from email.message import EmailMessage
from email.parser import BytesHeaderParser

from relay.core.errors import RelayError

ACCEPT = "X-Accept"
ADVISORY = "X-Advisory"
CONFIRM = "X-Confirm"
EMBARGO_UNTIL = "X-Embargo-Until"
LIFT = "X-Lift"
SHARE = "X-Share"
STATUS = "X-Status"
TITLE = "X-Title"
VOUCH = "X-Vouch"
KEYWORDS = (ACCEPT, ADVISORY, CONFIRM, EMBARGO_UNTIL, LIFT, SHARE, STATUS, TITLE, VOUCH)
# Lines that contradict each other in one post: each asks for a different lift.
_CONFLICTS = ((EMBARGO_UNTIL, LIFT),)
_CANONICAL = {name.lower(): name for name in KEYWORDS}

_CRLF = b"\r\n"
_MAX_DEPTH = 20  # as relay.inbound.structure; the payload passed those checks already
_MAX_VALUE = 200
_KEYWORD_LINE = re.compile(r"^(X-[A-Za-z-]+)[ \t]*:[ \t]*(.*?)[ \t]*$", re.IGNORECASE)
_HEADER_PARSER = BytesHeaderParser(policy=policy.default)


class KeywordError(RelayError):
    """The post's keywords contradict each other or cannot be read."""


def extract(payload: bytes) -> tuple[dict[str, str], bytes]:
    """The keywords of a verified payload (canonical names) and the payload without them."""
    found: dict[str, str] = {}
    head, body = _split(payload)
    kept = []
    for name, raw in _fields(head):
        if name.lower() in _CANONICAL:
            _add(found, name, _field_value(raw))
        else:
            kept.append(raw)
    entity = b"".join(kept) + _CRLF + body
    leaf = _first_text_leaf(entity, 0, len(entity), 0)
    if leaf is not None:
        start, end = leaf
        entity = entity[:start] + _strip_body_keywords(entity[start:end], found) + entity[end:]
    for first, second in _CONFLICTS:
        if first in found and second in found:
            raise KeywordError(
                f"'{first}: {found[first]}' and '{second}: {found[second]}' contradict each "
                "other; send one of them"
            )
    return found, entity


def _add(found: dict[str, str], name: str, value: str) -> None:
    """One keyword line into `found`; a keyword given twice is refused, even with the same
    value: which of two lines counts would be a guess, and a guess is what an attacker
    who splices lines into a signed post hopes for."""
    canonical = _CANONICAL[name.lower()]
    if not value:
        raise KeywordError(f"{canonical} has no value")
    if len(value) > _MAX_VALUE:
        raise KeywordError(f"{canonical} is longer than {_MAX_VALUE} characters")
    if canonical in found:
        raise KeywordError(
            f"{canonical} is given more than once ('{canonical}: {found[canonical]}' and "
            f"'{canonical}: {value}'); give each keyword once"
        )
    found[canonical] = value


# Header sections


def _split(entity: bytes) -> tuple[bytes, bytes]:
    """Header section (each field ending in CRLF, without the blank line) and body."""
    if entity.startswith(_CRLF):
        return b"", entity[2:]
    head, sep, body = entity.partition(_CRLF + _CRLF)
    if not sep:
        return entity, b""
    return head + _CRLF, body


def _fields(head: bytes) -> Iterator[tuple[str, bytes]]:
    """Each field with its continuation lines, as (name, raw bytes including CRLF)."""
    lines = head.split(_CRLF)[:-1] if head else []
    current: list[bytes] = []
    for line in lines:
        if line[:1] in (b" ", b"\t") and current:
            current.append(line)
            continue
        if current:
            yield _field_name(current[0]), _CRLF.join(current) + _CRLF
        current = [line]
    if current:
        yield _field_name(current[0]), _CRLF.join(current) + _CRLF


def _field_name(line: bytes) -> str:
    return line.partition(b":")[0].strip().decode("ascii", "replace")


def _field_value(raw: bytes) -> str:
    value = raw.partition(b":")[2].decode("utf-8", "replace")
    value = " ".join(value.split())
    if "=?" in value:
        try:
            value = " ".join(str(make_header(decode_header(value))).split())
        except (ValueError, LookupError):
            raise KeywordError(f"cannot decode the header field {raw[:40]!r}") from None
    return value


def _headers(head: bytes) -> EmailMessage:
    return _HEADER_PARSER.parsebytes(head + _CRLF)


# Finding the first text/plain part


def _first_text_leaf(data: bytes, start: int, end: int, depth: int) -> tuple[int, int] | None:
    """The byte range of the first inline text/plain leaf entity within data[start:end]."""
    if depth > _MAX_DEPTH:
        return None
    head, _ = _split(data[start:end])
    body_start = start + (2 if not head else len(head) + 2)
    body_start = min(body_start, end)
    headers = _headers(head)
    content_type = headers.get_content_type()
    if content_type.startswith("multipart/"):
        boundary = headers.get_param("boundary")
        if not isinstance(boundary, str) or not boundary:
            return None
        for part_start, part_end in _parts(data, body_start, end, boundary.encode()):
            leaf = _first_text_leaf(data, part_start, part_end, depth + 1)
            if leaf is not None:
                return leaf
        return None
    if content_type != "text/plain" or headers.get_content_disposition() == "attachment":
        return None
    return start, end


def _parts(data: bytes, start: int, end: int, boundary: bytes) -> Iterator[tuple[int, int]]:
    """Byte ranges of the body parts of a multipart body (RFC 2046 §5.1.1)."""
    delimiter = re.compile(
        rb"(?:\A|\r\n)--" + re.escape(boundary) + rb"(?P<close>--)?[ \t]*(?:\r\n|\Z)"
    )
    body = data[start:end]
    previous: re.Match[bytes] | None = None
    for match in delimiter.finditer(body):
        if previous is not None:
            yield start + previous.end(), start + match.start()
        if match["close"]:
            return
        previous = match


# Keyword lines at the top of a text/plain body


@dataclass(frozen=True)
class _Line:
    text: str | None  # None: not text in the part's charset
    end: int  # offset just after this line in the (encoded or decoded) body


def _strip_body_keywords(part: bytes, found: dict[str, str]) -> bytes:
    """The part with its leading keyword lines removed (its header section untouched)."""
    head, body = _split(part)
    headers = _headers(head)
    charset = headers.get_content_charset("us-ascii")
    if not _ascii_compatible(charset):
        return part
    cte = str(headers.get("Content-Transfer-Encoding", "7bit")).strip().lower()
    if cte in ("7bit", "8bit", "binary"):
        cut = _keyword_block(_plain_lines(body, charset), found)
        return part if cut == 0 else head + _CRLF + body[cut:]
    if cte == "quoted-printable":
        cut = _keyword_block(_qp_lines(body, charset), found)
        return part if cut == 0 else head + _CRLF + body[cut:]
    if cte == "base64":
        try:
            decoded = binascii.a2b_base64(body, strict_mode=False)
        except binascii.Error:
            return part
        cut = _keyword_block(_plain_lines(decoded, charset), found)
        if cut == 0:
            return part
        encoded = binascii.b2a_base64(decoded[cut:], newline=False)
        lines = [encoded[i : i + 76] for i in range(0, len(encoded), 76)]
        return head + _CRLF + _CRLF.join(lines) + (_CRLF if body.endswith(_CRLF) else b"")
    return part


def _keyword_block(lines: Iterator[_Line], found: dict[str, str]) -> int:
    """Read leading keyword lines into `found`; return where the kept body starts (0: none).

    Blank lines before the keywords, and one blank line after them, go with them.
    """
    cut = 0
    for line in lines:
        if line.text is None:
            break
        if not line.text.strip():
            if cut:  # the blank line that closes the block
                return line.end
            continue
        match = _KEYWORD_LINE.match(line.text)
        if match is None or match[1].lower() not in _CANONICAL:
            break
        _add(found, match[1], match[2])
        cut = line.end
    return cut


def _plain_lines(body: bytes, charset: str) -> Iterator[_Line]:
    pos = 0
    while pos < len(body):
        newline = body.find(b"\n", pos)
        end = len(body) if newline < 0 else newline + 1
        yield _Line(_text(body[pos:end].rstrip(b"\r\n"), charset), end)
        pos = end


def _qp_lines(body: bytes, charset: str) -> Iterator[_Line]:
    """Logical lines of a quoted-printable body: soft breaks joined, hard breaks kept."""
    pos, pending = 0, b""
    while pos < len(body):
        newline = body.find(b"\n", pos)
        end = len(body) if newline < 0 else newline + 1
        encoded = body[pos:end].rstrip(b"\r\n").rstrip(b" \t")
        pos = end
        if encoded.endswith(b"="):
            pending += encoded[:-1]
            continue
        try:
            decoded = binascii.a2b_qp(pending + encoded)
        except binascii.Error:
            decoded = None
        pending = b""
        yield _Line(None if decoded is None else _text(decoded, charset), end)


def _text(line: bytes, charset: str) -> str | None:
    try:
        return line.decode(charset)
    except (UnicodeDecodeError, LookupError):
        return None


def _ascii_compatible(charset: str) -> bool:
    """Keyword lines are ASCII; a charset that spells them differently has none."""
    try:
        return codecs.lookup(charset).encode("X-Advisory:")[0] == b"X-Advisory:"
    except (LookupError, UnicodeError):
        return False

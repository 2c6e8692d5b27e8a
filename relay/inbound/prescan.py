"""The pre-scan: bounds on the work a post can cause, checked in one linear pass.

Everything that parses a post costs more than reading it: the standard library's MIME
parser spends Python time and objects per line, per part and per level of nesting, and
its header parser is slower than linear on some field values (a few kilobytes of
comments or parameters in one Content-Type take seconds). None of that may run on bytes
nobody has vouched for. So before any parse, this module walks the post once and
refuses it (554 5.6.0) when it exceeds what an announcement needs:

- parts, counted by boundary delimiter lines (and encapsulated messages), not by
  Content-Type lines: a part needs no Content-Type; nesting depth; lines; line length;
- header fields per header section, octets per field and in all header sections;
- a Content-Type that is not of the plain form `type/subtype; name=value ...` (no
  comments, at most 16 parameters, at most 1,000 octets) or a Content-Transfer-Encoding
  that is not one word (mime_fields.py): the fields the parser reads to split and
  decode, and whose header objects the signature check builds;
- the structural faults the strict parse (structure.py) would refuse anyway, with the
  same words, where they show on the way: a multipart without a boundary, whose
  boundary never occurs or is never closed, two Content-Type fields, a header line
  that is not a field;
- a line that begins with a boundary but is not a delimiter: the standard library
  reads it as text, RFC 2046 readers as a delimiter.

`Prescan` is fed the bytes as they arrive (the SMTP edge feeds it while DATA comes in,
so a refused post is never kept); `prescan(raw)` scans bytes already held. Input has
CRLF line ends only (`check_wire` first). Python-level work happens only for header
lines and delimiter lines, both bounded by the limits; body lines are skipped by C
searches for the boundaries in force and for lines too long (wire.py). The scan models
the parser only as far as bounding it needs; the strict parse stays the judge of
structure.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import Enum

from relay.inbound.mime_fields import check_content_type, check_transfer_encoding, media_of
from relay.inbound.structure import MAX_DEPTH, SINGLE_FIELDS
from relay.inbound.wire import has_long_line, malformed

MAX_PARTS = 250  # entities: the message, each body part, each encapsulated message
MAX_LINES = 250_000  # lines in the post (a 10 MiB base64 attachment has 140,000)
MAX_LINE = 998  # octets in a line, CRLF excluded (RFC 5322 section 2.1.1)
MAX_FIELDS = 128  # header fields in one header section
MAX_FIELD = 8 * 1024  # octets in one header field, its folded lines included
MAX_HEADER_BYTES = 128 * 1024  # octets in all header sections of the post together

# The standard library's test for a header line (email.feedparser.headerRE).
_FIELD = re.compile(rb"([\x21-\x39\x3b-\x7e]*):")
_BOUNDARY = re.compile(rb"[\x20-\x7e]{1,200}")  # structure.py's rule for a boundary
_MIME_FIELDS = (b"content-type", b"content-transfer-encoding")
_SINGLE = frozenset(name.encode() for name in SINGLE_FIELDS)


@dataclass(frozen=True)
class Shape:
    """What the scan saw: enough for the top-level reading to check it agrees."""

    top_type: str  # media type of the message itself, as the parser would name it
    top_boundary: str | None  # its boundary, if a multipart
    parts: int
    depth: int
    lines: int
    types: frozenset[str]  # every media type declared in the post


class _Mode(Enum):
    HEADER = 1  # a header section
    BODY = 2  # a leaf body, or a multipart's preamble or epilogue: only delimiters count
    REPORT = 3  # message/delivery-status: blocks of header fields


@dataclass
class _Entity:
    default_type: bytes
    fields: int = 0
    field_size: int = 0  # of the field being read
    seen: set[bytes] = field(default_factory=set)
    collecting: bytes | None = None  # name of the MIME field being read
    pieces: list[bytes] = field(default_factory=list)  # its unfolded value so far
    content_type: bytes | None = None
    any_line: bool = False


@dataclass
class _Multipart:
    boundary: bytes
    digest: bool
    delimiters: int = 0
    closed: bool = False


class _Message:
    """A message/* container: it ends where the part around it ends."""


_Frame = _Multipart | _Message


class Prescan:
    """Feed it the post in pieces of any size; `close()` returns its `Shape`.

    Each call raises `Rejection` (554 5.6.0) as soon as a limit is passed; after that
    the scan is finished and must not be fed again.
    """

    def __init__(self) -> None:
        self._carry = b""  # an incomplete last line, kept for the next piece
        self._stack: list[_Frame] = []
        self._mode = _Mode.HEADER
        self._entity: _Entity | None = _Entity(b"text/plain")
        self._parts = 1
        self._depth = 0
        self._lines = 0
        self._header_bytes = 0
        self._types: set[str] = set()
        self._top: tuple[str, str | None] | None = None
        self._next: dict[bytes, int] = {}  # per boundary: where it next begins a line

    def feed(self, data: bytes) -> None:
        if self._carry:
            data = self._carry + data
        end = data.rfind(b"\n") + 1
        self._carry = data[end:]
        if len(self._carry) > MAX_LINE + 1:  # its CR may already be here
            raise malformed(f"a line longer than {MAX_LINE} octets")
        if end:
            self._block(data[:end] if end < len(data) else data)

    def close(self) -> Shape:
        if self._carry:  # a last line without CRLF
            if len(self._carry) > MAX_LINE:
                raise malformed(f"a line longer than {MAX_LINE} octets")
            self._block(self._carry)
            self._carry = b""
        if self._mode is _Mode.HEADER:
            self._end_headers()
        elif self._mode is _Mode.REPORT:
            self._end_fields()
        for frame in self._stack:
            self._ended(frame)
        assert self._top is not None
        return Shape(
            top_type=self._top[0],
            top_boundary=self._top[1],
            parts=self._parts,
            depth=self._depth,
            lines=self._lines,
            types=frozenset(self._types),
        )

    # One piece of whole lines

    def _block(self, block: bytes) -> None:
        if has_long_line(block, MAX_LINE):
            raise malformed(f"a line longer than {MAX_LINE} octets")
        self._next.clear()
        pos, size = 0, len(block)
        while pos < size:
            if self._mode is _Mode.BODY:
                pos = self._next_candidate(block, pos)
                if pos >= size:
                    break
            eol = block.find(b"\n", pos)
            after = size if eol < 0 else eol + 1
            self._line(block, pos, after)
            pos = after
        self._lines += block.count(b"\n")
        if self._lines > MAX_LINES:
            raise malformed(f"more than {MAX_LINES} lines")

    def _next_candidate(self, block: bytes, pos: int) -> int:
        """Where the next line starting with an open boundary begins (else the end)."""
        best = len(block)
        for frame in self._stack:
            if not isinstance(frame, _Multipart) or frame.closed:
                continue
            boundary = frame.boundary
            found = self._next.get(boundary, -1)
            if found < pos:
                needle = b"--" + boundary
                if block.startswith(needle, pos):
                    found = pos
                else:
                    hit = block.find(b"\n" + needle, pos)
                    found = len(block) if hit < 0 else hit + 1
                self._next[boundary] = found
            best = min(best, found)
        return best

    def _line(self, block: bytes, start: int, end: int) -> None:
        line = block[start:end]
        content = line[:-2] if line.endswith(b"\r\n") else line
        if content.startswith(b"--"):
            hit = self._delimiter(content)
            if hit is not None:
                self._on_delimiter(*hit)
                return
            if self._mode is _Mode.BODY:
                raise malformed("a line begins with a multipart boundary but is not a delimiter")
        if self._mode is _Mode.HEADER:
            self._header_line(content, len(line))
        elif self._mode is _Mode.REPORT:
            self._report_line(content, len(line))

    # Delimiters

    def _delimiter(self, content: bytes) -> tuple[int, bool] | None:
        """(index of the multipart, close?) if `content` is a delimiter line of an open
        multipart, innermost first, by the standard library's rule: the boundary, an
        optional `--`, then only spaces and tabs."""
        for index in range(len(self._stack) - 1, -1, -1):
            frame = self._stack[index]
            if not isinstance(frame, _Multipart) or frame.closed:
                continue
            needle = b"--" + frame.boundary
            if not content.startswith(needle):
                continue
            rest = content[len(needle) :]
            close = rest.startswith(b"--")
            if close:
                rest = rest[2:]
            if not rest.strip(b" \t"):
                return index, close
        return None

    def _on_delimiter(self, index: int, close: bool) -> None:
        if self._mode is _Mode.HEADER:
            self._end_headers()  # a delimiter also ends a header section
            # _end_headers may have opened a container for the part that just ended
        elif self._mode is _Mode.REPORT:
            self._end_fields()
        for inner in self._stack[index + 1 :]:
            self._ended(inner)
        del self._stack[index + 1 :]
        frame = self._stack[index]
        assert isinstance(frame, _Multipart)
        if close:
            if not frame.delimiters:
                raise malformed("multipart boundary declared but never found")
            frame.closed = True
            self._mode = _Mode.BODY
            self._entity = None
        else:
            frame.delimiters += 1
            self._begin(b"message/rfc822" if frame.digest else b"text/plain")

    def _ended(self, frame: _Frame) -> None:
        if isinstance(frame, _Multipart) and not frame.closed:
            if not frame.delimiters:
                raise malformed("multipart boundary declared but never found")
            raise malformed("multipart without its close delimiter")

    # Header sections

    def _begin(self, default_type: bytes) -> None:
        self._parts += 1
        if self._parts > MAX_PARTS:
            raise malformed(f"more than {MAX_PARTS} MIME parts")
        self._entity = _Entity(default_type)
        self._mode = _Mode.HEADER

    def _header_line(self, content: bytes, size: int) -> None:
        if not content:
            self._end_headers()
            return
        self._field_line(content, size)

    def _field_line(self, content: bytes, size: int) -> None:
        entity = self._entity
        assert entity is not None
        self._header_bytes += size
        if self._header_bytes > MAX_HEADER_BYTES:
            raise malformed(f"header sections larger than {MAX_HEADER_BYTES} octets in all")
        if content[:1] in (b" ", b"\t"):
            if not entity.fields:
                raise malformed("the header section starts with a continuation")
            entity.field_size += size
            if entity.field_size > MAX_FIELD:
                raise malformed(f"a header field longer than {MAX_FIELD} octets")
            if entity.collecting is not None:
                entity.pieces.append(content)
            return
        self._finish_field(entity)
        if content.startswith(b"From "):
            if entity.any_line:
                raise malformed("a 'From ' line inside the header section")
            entity.any_line = True  # an mbox separator before the fields
            return
        found = _FIELD.match(content)
        if found is None:
            raise malformed("a line in the header section is not a field")
        entity.any_line = True
        entity.fields += 1
        if entity.fields > MAX_FIELDS:
            raise malformed(f"more than {MAX_FIELDS} header fields in one header section")
        entity.field_size = size
        if entity.field_size > MAX_FIELD:
            raise malformed(f"a header field longer than {MAX_FIELD} octets")
        name = found[1].lower()
        if name in _SINGLE:
            if name in entity.seen:
                raise malformed(f"more than one {name.decode()} header field")
            entity.seen.add(name)
        if name in _MIME_FIELDS:
            entity.collecting = name
            entity.pieces = [content[found.end() :]]

    def _finish_field(self, entity: _Entity) -> None:
        name, entity.collecting = entity.collecting, None
        if name is None:
            return
        value = b"".join(entity.pieces)
        entity.pieces = []
        if name == b"content-transfer-encoding":
            check_transfer_encoding(value)
        else:
            check_content_type(value)
            entity.content_type = value

    def _end_headers(self) -> None:
        entity = self._entity
        assert entity is not None
        self._finish_field(entity)
        self._entity = None
        media, boundary = media_of(entity.content_type, entity.default_type)
        self._types.add(media.decode("ascii"))
        if self._top is None:
            self._top = (media.decode("ascii"), boundary.decode("latin-1") if boundary else None)
        maintype = media.partition(b"/")[0]
        if maintype == b"multipart":
            if boundary is None:
                raise malformed("multipart without a boundary parameter")
            if not _BOUNDARY.fullmatch(boundary):
                raise malformed("invalid multipart boundary")
            self._push(_Multipart(boundary, digest=media == b"multipart/digest"))
            self._mode = _Mode.BODY
        elif maintype == b"message":
            self._push(_Message())
            if media == b"message/delivery-status":
                self._mode = _Mode.REPORT
            else:
                self._begin(b"text/plain")
        else:
            self._mode = _Mode.BODY

    def _push(self, frame: _Frame) -> None:
        self._stack.append(frame)
        self._depth = max(self._depth, len(self._stack))
        if len(self._stack) > MAX_DEPTH:
            raise malformed(f"MIME nesting deeper than {MAX_DEPTH} levels")

    # message/delivery-status: blocks of fields separated by empty lines

    def _report_line(self, content: bytes, size: int) -> None:
        if not content:
            self._end_fields()
            return
        if self._entity is None:
            self._parts += 1
            if self._parts > MAX_PARTS:
                raise malformed(f"more than {MAX_PARTS} MIME parts")
            self._entity = _Entity(b"text/plain")
        self._field_line(content, size)

    def _end_fields(self) -> None:
        if self._entity is not None:
            self._finish_field(self._entity)
            self._entity = None


def prescan(raw: bytes) -> Shape:
    """Scan a whole post (CRLF line ends only); raise `Rejection` past any limit."""
    scan = Prescan()
    scan.feed(raw)
    return scan.close()

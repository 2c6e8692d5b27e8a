"""What a message says, part by part, whatever each part claims to be.

Every scan for embargoed text (the index of what senders posted, the router, the gate,
`relay trace`) reads a MIME payload through `read_content`: the matcher can only catch what
it is shown, and a text part is only one of the dresses a quotation can wear. So every part
is read on its own evidence, not its label:

- transfer encodings are decoded; a charset that is missing, unknown or wrong is not a
  reason to skip a part: the declared one, then UTF-8, then a detector
  (charset-normalizer), then Latin-1, which decodes anything;
- HTML becomes text through a real parser (html.parser: entities, tags, comments,
  ``<script>`` and ``<style>`` as raw text). What a reader sees is kept in order; what is
  hidden from them (hidden elements, comments, scripts, styles, attribute values) is
  scanned too, after it: a leak hidden in a comment is still a leak;
- a part labelled ``application/octet-stream`` or any other type is sniffed: a byte order
  mark, gzip / bzip2 / xz, zip and tar are recognised by their magic numbers, and text by
  being mostly printable once decoded;
- archives are opened with limits: expanded bytes per message, expansion ratio, nesting
  depth and member count. Decompression streams with a cap (never ``extractall``, never a
  trusted header size), so a bomb costs at most the cap;
- message/rfc822 parts and nested multiparts are read recursively.

**Fail closed.** What cannot be read is reported, one short reason per part, in
``Content.unreadable``: an archive over the limits, an encrypted or password-protected
archive member, an OpenPGP- or S/MIME-encrypted part (``application/pgp-encrypted``,
``-----BEGIN PGP MESSAGE-----``, ``application/pkcs7-mime``), a document format with no
reader here (PDF, OLE, 7z, RAR, zstd), any other binary. The caller treats such a message as
possibly embargoed.

Not unreadable, and listed in ``Content.skipped`` instead: a real OpenPGP signature or
detached S/MIME signature (every signed post has one), a real OpenPGP public key (an
X-Share post carries one), and images. A picture can show a page of an advisory, but no scan
of ours could see it, and calling every logo and screenshot unreadable would hold every
mail that has one; what is checked is that a part labelled a signature, a key or an image
really is one (by its armour or magic number). Anything else in such a label is read like
any other part.
"""

from __future__ import annotations

import bz2
import codecs
import email
import email.policy
import functools
import gzip
import io
import lzma
import re
import tarfile
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from email.message import Message
from html.parser import HTMLParser

import charset_normalizer

__all__ = [
    "MAX_DEPTH",
    "MAX_EXPANDED",
    "MAX_MEMBERS",
    "MAX_RATIO",
    "Content",
    "html_text",
    "read_content",
]

MAX_EXPANDED = 32 * 1024 * 1024  # bytes decompressed per message, all archives together
MAX_RATIO = 100  # expanded / compressed, above RATIO_FLOOR
RATIO_FLOOR = 1024 * 1024  # a small member may expand as it likes (up to this)
MAX_DEPTH = 8  # archives, compressed streams and attached messages, one inside another
MAX_MEMBERS = 1000  # archive members and MIME parts per message
MAX_MIME_DEPTH = 50  # nested multiparts (the inbound check already allows only 20)
_MIN_PRINTABLE = 0.95  # share of characters that must be printable for bytes to be text
_SNIFF = 64 * 1024  # bytes of a part looked at to decide whether it is text

_PGP_MESSAGE = re.compile(r"-----BEGIN PGP MESSAGE-----")
_ARMOUR = {
    "OpenPGP signature": re.compile(
        rb"-----BEGIN PGP SIGNATURE-----.*?-----END PGP SIGNATURE-----[ \t]*\r?\n?", re.S
    ),
    "OpenPGP public key": re.compile(
        rb"-----BEGIN PGP PUBLIC KEY BLOCK-----.*?-----END PGP PUBLIC KEY BLOCK-----"
        rb"[ \t]*\r?\n?",
        re.S,
    ),
}
_SIGNED_TYPES = {
    "application/pgp-signature": "OpenPGP signature",
    "application/pgp-keys": "OpenPGP public key",
    "application/pkcs7-signature": "S/MIME signature",
    "application/x-pkcs7-signature": "S/MIME signature",
}
_BINARY_SIGNATURE: dict[str, Callable[[bytes], bool]] = {
    "OpenPGP signature": lambda data: _packet_tag(data) == 2,
    "OpenPGP public key": lambda data: _packet_tag(data) == 6,
    "S/MIME signature": lambda data: data[:1] == b"\x30",  # a DER SEQUENCE
}
_UNPRINTABLE = re.compile(r"[\x00-\x08\x0e-\x1f\x7f-\x9f\ufffd]")
_MARKUP = re.compile(r"\s*(?:<!doctype\s+html|<html|<\?xml|<svg|<head|<body)", re.I)
_ZIP_ERRORS = (
    zipfile.BadZipFile,
    NotImplementedError,
    RuntimeError,
    OSError,
    EOFError,
    lzma.LZMAError,
    zlib.error,
)
_COMPRESSED_SUFFIX = re.compile(r"\.(?:gz|tgz|bz2|xz)$", re.I)
_PRINTABLE_RUN = re.compile(rb"[\t\n\r\x20-\x7e]{20,}")
_SINGLE_BYTE = re.compile(r"^(?:iso8859|latin|cp125\d|cp437|cp850|koi8|mac|ascii|us-ascii)")

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


@dataclass(frozen=True)
class Content:
    """The texts a scan sees in one message.

    ``body`` is the message's own text parts (those not attached as files), joined;
    ``attachments`` are (name, text) for every other part that could be read, archive members
    named ``archive/member``; ``unreadable`` has one short reason per part that could not be
    read (the caller should treat the message as possibly embargoed); ``skipped`` notes the
    parts not scanned by design (signatures, public keys, images).
    """

    body: str
    attachments: tuple[tuple[str, str], ...] = ()
    unreadable: tuple[str, ...] = ()
    skipped: tuple[str, ...] = ()

    @property
    def text(self) -> str:
        """Everything that was read, for scanning."""
        return "\n".join([self.body, *(text for _, text in self.attachments)])


@functools.lru_cache(maxsize=4)  # the gate asks once per copy of the same post
def read_content(payload: bytes) -> Content:
    """Every text in a MIME payload (headers and body, CRLF or LF), and what could not be read."""
    reader = _Reader()
    try:
        entity = email.message_from_bytes(payload, policy=email.policy.default)
    except Exception as exc:  # RecursionError for a structure nested too deeply, say
        return Content("", unreadable=(f"the message could not be parsed ({type(exc).__name__})",))
    reader.entity(entity, depth=0, mime_depth=0)
    return Content(
        "\n".join(reader.body),
        tuple(reader.attachments),
        tuple(reader.unreadable),
        tuple(reader.skipped),
    )


@dataclass
class _Reader:
    body: list[str] = field(default_factory=list)
    attachments: list[tuple[str, str]] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    expanded: int = 0  # bytes decompressed so far
    members: int = 0  # parts and archive members seen so far

    # -- MIME

    def entity(self, part: Message, *, depth: int, mime_depth: int) -> None:
        self.members += 1
        if self.members > MAX_MEMBERS:
            if self.members == MAX_MEMBERS + 1:
                self.unreadable.append(f"more than {MAX_MEMBERS} parts and archive members")
            return
        try:
            self._entity(part, depth=depth, mime_depth=mime_depth)
        except Exception as exc:  # fail closed: a part that breaks the reader is unreadable
            self.unreadable.append(f"{_label(part)}: could not be read ({type(exc).__name__})")

    def _entity(self, part: Message, *, depth: int, mime_depth: int) -> None:
        if part.get_content_type() in ("message/rfc822", "message/global"):
            self._message(part, _label(part), depth=depth, mime_depth=mime_depth)
        elif part.is_multipart():
            if mime_depth >= MAX_MIME_DEPTH:
                self.unreadable.append(f"multiparts nested more than {MAX_MIME_DEPTH} deep")
                return
            for sub in part.get_payload():
                if isinstance(sub, Message):
                    self.entity(sub, depth=depth, mime_depth=mime_depth + 1)
        else:
            self._leaf(part, _label(part), depth=depth)

    def _leaf(self, part: Message, name: str, *, depth: int) -> None:
        ctype = part.get_content_type()
        if ctype in ("message/partial", "message/external-body"):
            self.unreadable.append(f"{name}: {ctype} (the content is elsewhere)")
            return
        data = part.get_payload(decode=True)
        if not isinstance(data, bytes):
            data = str(part.get_payload()).encode("utf-8", "surrogateescape")
        if ctype == "application/pgp-encrypted" or ctype.endswith("pkcs7-mime"):
            self.unreadable.append(f"{name}: encrypted ({ctype})")
            return
        kind = _SIGNED_TYPES.get(ctype)
        if kind is not None:
            data = self._strip_signature(data, kind, name)
            if not data.strip():
                return
        attached = bool(part.get_filename()) or part.get_content_disposition() == "attachment"
        self.data(
            data,
            name,
            ctype=ctype,
            charset=part.get_content_charset(),
            body=not attached and ctype.startswith("text/"),
            depth=depth,
        )

    def _message(self, part: Message, name: str, *, depth: int, mime_depth: int) -> None:
        if depth >= MAX_DEPTH:
            self.unreadable.append(f"{name}: nested more than {MAX_DEPTH} containers deep")
            return
        inner = part.get_payload()
        messages = [m for m in inner if isinstance(m, Message)] if isinstance(inner, list) else []
        if not messages:  # an encoded message/rfc822 (not allowed, but seen)
            raw = part.get_payload(decode=True)
            if isinstance(raw, bytes):
                messages = [email.message_from_bytes(raw, policy=email.policy.default)]
        for message in messages:
            if subject := message.get("subject"):
                self.body.append(f"Subject: {subject}")
            self.entity(message, depth=depth + 1, mime_depth=mime_depth + 1)

    def _strip_signature(self, data: bytes, kind: str, name: str) -> bytes:
        """A real signature or key is skipped; what else the part holds is still read."""
        if kind in _ARMOUR:
            stripped, count = _ARMOUR[kind].subn(b"", data)
            if count:
                self.skipped.append(f"{name}: {kind}")
                return stripped
        if _BINARY_SIGNATURE[kind](data):
            self._skip(data, name, kind)
            return b""
        return data

    def _skip(self, data: bytes, name: str, what: str) -> None:
        """A binary part not read as a whole: its printable runs still are (a text appended to
        a real picture, metadata), as ``strings`` would show them."""
        self.skipped.append(f"{name}: {what}")
        runs = _PRINTABLE_RUN.findall(data)
        if runs:
            self.attachments.append((name, b"\n".join(runs).decode("ascii")))

    # -- bytes, whatever they claim to be

    def data(
        self,
        data: bytes,
        name: str,
        *,
        ctype: str | None = None,
        charset: str | None = None,
        body: bool = False,
        depth: int,
    ) -> None:
        for magic, opener in _CONTAINERS:
            if magic(data):
                if depth >= MAX_DEPTH:
                    self.unreadable.append(f"{name}: nested more than {MAX_DEPTH} containers deep")
                else:
                    opener(self, data, name, depth + 1)
                return
        for magic_bytes, what in _UNREADABLE_FORMATS:
            if data.startswith(magic_bytes):
                self.unreadable.append(f"{name}: {what}")
                return
        if _is_image(data) and _sniff_text(data) is None:
            self._skip(data, name, "image")
            return
        if _packet_tag(data) in (1, 3, 18, 20):  # encrypted-session-key or encrypted-data
            self.unreadable.append(f"{name}: OpenPGP-encrypted data")
            return
        declared_text = bool(ctype and (ctype.startswith("text/") or _is_markup_type(ctype)))
        text = _decode(data, charset) if declared_text else _sniff_text(data)
        if text is None:
            self.unreadable.append(f"{name}: binary data ({ctype or 'unlabelled'})")
            return
        text = text.replace("\r\n", "\n")
        if (ctype and _is_markup_type(ctype)) or _MARKUP.match(text[:1024]):
            text = html_text(text)
        if _PGP_MESSAGE.search(text):
            self.unreadable.append(f"{name}: an OpenPGP-encrypted message inside the text")
        if body:
            self.body.append(text)
        else:
            self.attachments.append((name, text))

    # -- containers

    def _limit(self, compressed: int | None) -> tuple[int, str]:
        """The most bytes the next member may expand to, and what to say if it goes over."""
        left = MAX_EXPANDED - self.expanded
        budget = f"over the limit of {MAX_EXPANDED >> 20} MiB expanded per message"
        if compressed is None:
            return left, budget
        ratio = max(RATIO_FLOOR, compressed * MAX_RATIO)
        if ratio < left:
            return ratio, f"expands more than {MAX_RATIO} times (a compression bomb?)"
        return left, budget

    def _expanded(self, name: str, content: bytes, limit: tuple[int, str]) -> bool:
        """Count what was expanded; False (and reported) if it went over the limit."""
        most, reason = limit
        self.expanded += min(len(content), most)
        if len(content) > most:
            self.unreadable.append(f"{name}: {reason}")
            return False
        return True

    def _stream(self, data: bytes, name: str, depth: int, kind: str) -> None:
        limit = self._limit(len(data))
        try:
            content = _decompressed(kind, data, limit[0] + 1)
        except (OSError, EOFError, lzma.LZMAError, zlib.error) as exc:
            self.unreadable.append(f"{name}: damaged {kind} data ({type(exc).__name__})")
            return
        if self._expanded(name, content, limit):
            inner = _COMPRESSED_SUFFIX.sub(lambda m: ".tar" if m.group() == ".tgz" else "", name)
            self.data(content, inner, depth=depth)

    def _zip(self, data: bytes, name: str, depth: int) -> None:
        # Counted before parsing: zipfile would build an object for every directory entry.
        if data.count(b"PK\x01\x02") + self.members > MAX_MEMBERS:
            self.unreadable.append(f"{name}: zip archive of more than {MAX_MEMBERS} members")
            return
        try:
            archive = zipfile.ZipFile(io.BytesIO(data))
            members = archive.infolist()
        except (zipfile.BadZipFile, OSError, ValueError, NotImplementedError) as exc:
            self.unreadable.append(f"{name}: damaged zip archive ({type(exc).__name__})")
            return
        if len(members) + self.members > MAX_MEMBERS:
            self.unreadable.append(f"{name}: zip archive of {len(members)} members")
            return
        with archive:
            for member in members:
                if member.is_dir():
                    continue
                self.members += 1
                label = f"{name}/{member.filename}"
                if member.flag_bits & 0x1:
                    self.unreadable.append(f"{label}: encrypted zip member")
                    continue
                limit = self._limit(member.compress_size)
                try:
                    with archive.open(member) as stream:
                        content = stream.read(limit[0] + 1)
                except _ZIP_ERRORS as exc:
                    self.unreadable.append(f"{label}: unreadable zip member ({exc})"[:200])
                    continue
                if self._expanded(label, content, limit):
                    self.data(content, label, depth=depth)

    def _tar(self, data: bytes, name: str, depth: int) -> None:
        try:
            with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as archive:
                for member in archive:  # one header at a time: never a listing of them all
                    self.members += 1
                    if self.members > MAX_MEMBERS:
                        self.unreadable.append(f"{name}: tar archive of too many members")
                        return
                    if not member.isfile():
                        continue
                    stream = archive.extractfile(member)
                    if stream is None:
                        continue
                    label = f"{name}/{member.name}"
                    limit = self._limit(None)  # sparse members expand: the budget holds
                    content = stream.read(limit[0] + 1)
                    if self._expanded(label, content, limit):
                        self.data(content, label, depth=depth)
        except (tarfile.TarError, OSError, EOFError) as exc:
            self.unreadable.append(f"{name}: damaged tar archive ({type(exc).__name__})")


def _decompressed(kind: str, data: bytes, most: int) -> bytes:
    """At most ``most`` bytes of a compressed stream: the readers decompress as they go."""
    raw = io.BytesIO(data)
    if kind == "gzip":
        with gzip.GzipFile(fileobj=raw, mode="rb") as stream:
            return stream.read(most)
    if kind == "bzip2":
        with bz2.BZ2File(raw, mode="rb") as stream:
            return stream.read(most)
    with lzma.LZMAFile(raw, mode="rb") as stream:
        return stream.read(most)


_CONTAINERS: tuple[tuple[Callable[[bytes], bool], Callable[[_Reader, bytes, str, int], None]], ...]
_CONTAINERS = (
    (lambda d: d.startswith(b"\x1f\x8b"), lambda r, d, n, x: r._stream(d, n, x, "gzip")),
    (
        lambda d: d.startswith(b"BZh") and d[4:10] == b"1AY&SY",
        lambda r, d, n, x: r._stream(d, n, x, "bzip2"),
    ),
    (lambda d: d.startswith(b"\xfd7zXZ\x00"), lambda r, d, n, x: r._stream(d, n, x, "xz")),
    (lambda d: d[:4] in (b"PK\x03\x04", b"PK\x05\x06", b"PK\x07\x08"), _Reader._zip),
    (lambda d: d[257:262] == b"ustar", _Reader._tar),
)


def _label(part: Message) -> str:
    name = part.get_filename()
    return name if name else f"({part.get_content_type()} part)"


def _packet_tag(data: bytes) -> int | None:
    """The tag of the OpenPGP packet binary ``data`` starts with, if it looks like one."""
    if not data or not data[0] & 0x80:
        return None
    first = data[0]
    return first & 0x3F if first & 0x40 else (first >> 2) & 0x0F


def _is_image(data: bytes) -> bool:
    return data.startswith(_IMAGES) or (data[:4] == b"RIFF" and data[8:12] == b"WEBP")


def _is_markup_type(ctype: str) -> bool:
    return ctype in ("text/html", "application/xhtml+xml", "image/svg+xml") or ctype.endswith(
        "/xml"
    )


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


def _decode(data: bytes, charset: str | None) -> str:
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


def _sniff_text(data: bytes) -> str | None:
    """The text in bytes of any label, if they are text: decoded and mostly printable."""
    if not data:
        return ""
    encoding = _bom(data) or _utf16_without_bom(data)
    if encoding is None and b"\x00" in data[:_SNIFF]:
        return None
    text = data.decode(encoding, "replace") if encoding else _decode(data, None)
    sample = text[:_SNIFF]
    if len(_UNPRINTABLE.findall(sample)) > (1 - _MIN_PRINTABLE) * len(sample):
        return None
    return text


# -- HTML


def _words(words: str) -> frozenset[str]:
    return frozenset(words.split())


_BLOCKS = _words(
    "address article aside blockquote body br caption dd details div dl dt fieldset "
    "figcaption figure footer form h1 h2 h3 h4 h5 h6 header hr html li main nav ol p pre "
    "section summary table tbody td tfoot th thead title tr ul"
)
_VOID = _words("area base br col embed hr img input link meta param source track wbr")
_HIDDEN_TAGS = _words("head script style template noscript title")
_HIDDEN_STYLE = re.compile(
    r"display\s*:\s*none|visibility\s*:\s*hidden|font-size\s*:\s*0(?![.\d]*[1-9])"
    r"|opacity\s*:\s*0(?![.\d]*[1-9])|(?:max-)?(?:height|width)\s*:\s*0(?![.\d]*[1-9])",
    re.I,
)


class _HTMLText(HTMLParser):
    """Shown text in order; hidden text, comments and attribute values apart."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.shown: list[str] = []
        self.hidden: list[list[str]] = []  # one run per outermost hidden element
        self.extras: list[str] = []  # comments, declarations, attribute values
        self._open: list[tuple[str, bool]] = []  # (tag, hidden)

    def _hiding(self) -> bool:
        return bool(self._open) and self._open[-1][1]

    def _sink(self) -> list[str]:
        return self.hidden[-1] if self._hiding() else self.shown

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = " ".join(value for _, value in attrs if value)
        if values:
            self.extras.append(values)
        style = " ".join(value or "" for key, value in attrs if key == "style")
        hides = (
            tag in _HIDDEN_TAGS
            or any(key == "hidden" for key, _ in attrs)
            or bool(_HIDDEN_STYLE.search(style))
        )
        if tag not in _VOID:
            if hides and not self._hiding():
                self.hidden.append([])
            self._open.append((tag, hides or self._hiding()))
        if tag in _BLOCKS:  # a hidden block breaks no line of the shown text
            self._sink().append("\n")

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)
        if tag not in _VOID:
            self.handle_endtag(tag)

    def handle_endtag(self, tag: str) -> None:
        for i in range(len(self._open) - 1, -1, -1):
            if self._open[i][0] == tag:
                if tag in _BLOCKS:
                    self._sink().append("\n")
                del self._open[i:]
                return

    def handle_data(self, data: str) -> None:
        self._sink().append(data)

    def handle_comment(self, data: str) -> None:
        self.extras.append(data)

    def unknown_decl(self, data: str) -> None:  # <![CDATA[...]]> and the like
        self.extras.append(data)


def html_text(markup: str) -> str:
    """The text of an HTML (or XML) document: what is shown, then what is hidden."""
    parser = _HTMLText()
    parser.feed(markup)
    parser.close()
    hidden = "\n".join(["".join(run) for run in parser.hidden] + parser.extras).strip()
    shown = "".join(parser.shown)
    return f"{shown}\n\n{hidden}" if hidden else shown

"""What a message says, part by part, whatever each part claims to be.

Every scan for embargoed text (the index of what senders posted, the router, the gate,
`relay trace`) reads a MIME payload through `read_content`: the matcher can only catch what
it is shown, and a text part is only one of the dresses a quotation can wear. So every part
is read on its own evidence, not its label:

- transfer encodings are decoded; a charset that is missing, unknown or wrong is not a
  reason to skip a part (charsets.py: the declared one, then UTF-8, then a detector, then
  Latin-1, which decodes anything);
- HTML becomes text through a real parser (markup.py): what a reader sees, in order, then
  what is hidden from them (hidden elements, comments, scripts, styles, attribute values):
  a leak hidden in a comment is still a leak;
- a part labelled ``application/octet-stream`` or any other type is sniffed: a byte order
  mark, gzip / bzip2 / xz, zip and tar are recognised by their magic numbers (formats.py,
  archives.py), and text by being mostly printable once decoded;
- archives are opened with limits (archives.py): expanded bytes per message, expansion
  ratio, nesting depth and member count, so a bomb costs at most the cap;
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

import email
import email.policy
import functools
import re
from dataclasses import dataclass, field
from email.message import Message

from relay.leaks.archives import MAX_DEPTH, MAX_MEMBERS, Unpacker
from relay.leaks.charsets import decode_text, sniff_text
from relay.leaks.formats import (
    ARMOUR,
    PGP_MESSAGE,
    SIGNED_TYPES,
    is_encrypted_packet,
    is_image,
    is_signature,
    unreadable_format,
)
from relay.leaks.markup import html_text, is_markup, is_markup_type

__all__ = ["Content", "read_content"]

MAX_MIME_DEPTH = 50  # nested multiparts (the inbound check already allows only 20)
_PRINTABLE_RUN = re.compile(rb"[\t\n\r\x20-\x7e]{20,}")


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
class _Reader(Unpacker):
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
        kind = SIGNED_TYPES.get(ctype)
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
        if kind in ARMOUR:
            stripped, count = ARMOUR[kind].subn(b"", data)
            if count:
                self.skipped.append(f"{name}: {kind}")
                return stripped
        if is_signature(kind, data):
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
        if self.unpack(data, name, depth):
            return
        what = unreadable_format(data)
        if what is not None:
            self.unreadable.append(f"{name}: {what}")
            return
        if is_image(data) and sniff_text(data) is None:
            self._skip(data, name, "image")
            return
        if is_encrypted_packet(data):
            self.unreadable.append(f"{name}: OpenPGP-encrypted data")
            return
        declared_text = bool(ctype and (ctype.startswith("text/") or is_markup_type(ctype)))
        text = decode_text(data, charset) if declared_text else sniff_text(data)
        if text is None:
            self.unreadable.append(f"{name}: binary data ({ctype or 'unlabelled'})")
            return
        text = text.replace("\r\n", "\n")
        if (ctype and is_markup_type(ctype)) or is_markup(text):
            text = html_text(text)
        if PGP_MESSAGE.search(text):
            self.unreadable.append(f"{name}: an OpenPGP-encrypted message inside the text")
        if body:
            self.body.append(text)
        else:
            self.attachments.append((name, text))


def _label(part: Message) -> str:
    name = part.get_filename()
    return name if name else f"({part.get_content_type()} part)"

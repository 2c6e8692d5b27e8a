"""An evasion corpus: excerpts of public advisories in the dresses that dodge a naive scan.

Each transform changes either the text (zero-width characters, no-break spaces, homoglyphs,
letter-spacing, re-wrapping as a quote, upper case, extra spaces) or the way a message
carries it (HTML with ``&nbsp;`` or hidden junk inside words, an unknown charset label,
UTF-16, base64, quoted-printable, a ``.txt`` attachment, an ``application/octet-stream``
attachment, a gzip'd attachment, a forwarded message/rfc822). Transforms compose: text
transforms apply first, in a fixed order, then the carrier's (so extra spaces widen the
gaps of a letter-spaced text, between letters and between words).

    TRANSFORMS                  name -> transform (of a `Dress`)
    PAIRS                       every two transforms that make sense together
    excerpts(rng, count)        (advisory file, excerpt of 2-5 sentences) from tests/data/matcher
    evasive_text(text, names)   the text as the text transforms leave it
    evasive_entity(text, names) a MIME entity (headers and body, CRLF) carrying it
    evasive_payload(text, names) a whole message around that entity (CRLF)

Used by tests/test_content.py, tests/test_matcher.py and bench/scan.py; end-to-end tests can
sign `evasive_entity` and post it.
"""

from __future__ import annotations

import base64
import binascii
import email.utils
import gzip
import html
import itertools
import random
import re
import textwrap
import zlib
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

DATA = Path(__file__).resolve().parent.parent / "data" / "matcher"
CRLF = "\r\n"


@dataclass(frozen=True)
class Dress:
    """A text and how it is carried."""

    text: str
    markup: str | None = None  # HTML carrying the text, if the part is HTML
    charset: str = "utf-8"  # the label
    encoding: str = "utf-8"  # the real encoding of the bytes
    transfer: str = "8bit"  # Content-Transfer-Encoding
    content_type: str | None = None  # overrides text/plain or text/html
    filename: str | None = None
    gzipped: bool = False
    forwarded: bool = False  # inside a message/rfc822 part


Transform = Callable[[Dress], Dress]

_ZERO_WIDTH = ("\u200b", "\u200c", "\u200d", "\u2060", "\ufeff", "\u00ad")
# Letters from other scripts that look like Latin ones, as used in homograph attacks (TR39
# has Cyrillic palochka, often used for l, confusable with i: l is left out).
_HOMOGLYPHS = str.maketrans(
    "aceopxyijsdhABCEHIKMOPTXYZN",
    "асеорхуіјѕԁһАВСЕНІКМОРТХΥΖΝ",
)


def _zero_width(dress: Dress) -> Dress:
    chars = itertools.cycle(_ZERO_WIDTH)
    text = re.sub(r"(?<=\w)(?=\w)", lambda _: next(chars), dress.text)
    return replace(dress, text=text)


def _nbsp(dress: Dress) -> Dress:
    return replace(dress, text=dress.text.replace(" ", "\u00a0"))


def _homoglyphs(dress: Dress) -> Dress:
    return replace(dress, text=dress.text.translate(_HOMOGLYPHS))


def _letter_spacing(dress: Dress) -> Dress:
    return replace(dress, text=" ".join(" ".join(dress.text.split())))


def _re_wrap(dress: Dress) -> Dress:
    lines = textwrap.wrap(dress.text, 60, break_long_words=False, break_on_hyphens=False)
    return replace(dress, text="\n".join("> " + line for line in lines))


def _upper_case(dress: Dress) -> Dress:
    return replace(dress, text=dress.text.upper())


def _extra_spaces(dress: Dress) -> Dress:
    gaps = itertools.cycle(("  ", " \t ", "   "))
    return replace(dress, text=re.sub(" ", lambda _: next(gaps), dress.text))


def _html_nbsp(dress: Dress) -> Dress:
    # Spaces as &nbsp;, some letters as character references, paragraphs as <p>.
    paragraphs = []
    for paragraph in dress.text.split("\n\n"):
        escaped = html.escape(paragraph).replace(" ", "&nbsp;").replace("e", "&#101;")
        paragraphs.append(f"<p>{escaped.replace(chr(10), '<br>')}</p>")
    return replace(dress, markup=f"<html><body>{''.join(paragraphs)}</body></html>")


def _html_hidden(dress: Dress) -> Dress:
    # Junk inside words, hidden from the reader, and an empty inline tag.
    junk = itertools.cycle(("qz", "xw", "vk"))

    def word(match: re.Match[str]) -> str:
        text = match.group()
        if len(text) < 4:
            return html.escape(text)
        middle = len(text) // 2
        hidden = f'<span style="display:none">{next(junk)}</span>'
        return f"{html.escape(text[:middle])}{hidden}<b></b>{html.escape(text[middle:])}"

    body = re.sub(r"\S+", word, dress.text).replace("\n", "<br>\n")
    return replace(dress, markup=f"<html><body><div>{body}</div><!-- x --></body></html>")


def _unknown_charset(dress: Dress) -> Dress:
    return replace(dress, charset="x-evasion-unknown")


def _utf16(dress: Dress) -> Dress:
    return replace(dress, charset="utf-16", encoding="utf-16")


def _base64(dress: Dress) -> Dress:
    return replace(dress, transfer="base64")


def _quoted_printable(dress: Dress) -> Dress:
    return replace(dress, transfer="quoted-printable")


def _txt_attachment(dress: Dress) -> Dress:
    return replace(dress, filename=dress.filename or "notes.txt")


def _octet_stream(dress: Dress) -> Dress:
    return replace(dress, content_type="application/octet-stream", filename="notes.dat")


def _gzip(dress: Dress) -> Dress:
    return replace(dress, gzipped=True, filename=(dress.filename or "notes.txt") + ".gz")


def _forwarded(dress: Dress) -> Dress:
    return replace(dress, forwarded=True)


# In the order they apply: the text first, then its markup, charset, part and message.
TRANSFORMS: dict[str, Transform] = {
    "upper-case": _upper_case,
    "homoglyphs": _homoglyphs,
    "letter-spacing": _letter_spacing,
    "zero-width": _zero_width,
    "nbsp": _nbsp,
    "extra-spaces": _extra_spaces,
    "re-wrap": _re_wrap,
    "html-nbsp": _html_nbsp,
    "html-hidden": _html_hidden,
    "unknown-charset": _unknown_charset,
    "utf-16": _utf16,
    "base64": _base64,
    "quoted-printable": _quoted_printable,
    "txt-attachment": _txt_attachment,
    "octet-stream": _octet_stream,
    "gzip": _gzip,
    "rfc822": _forwarded,
}
# Transforms that set the same thing: a pair of them is one of them.
_EXCLUSIVE = ({"html-nbsp", "html-hidden"}, {"base64", "quoted-printable"})
PAIRS: tuple[tuple[str, str], ...] = tuple(
    pair
    for pair in itertools.combinations(TRANSFORMS, 2)
    if not any(set(pair) <= group for group in _EXCLUSIVE)
)


def dress(text: str, names: tuple[str, ...] | list[str]) -> Dress:
    """The text with the named transforms applied, in TRANSFORMS order."""
    unknown = set(names) - TRANSFORMS.keys()
    if unknown:
        raise KeyError(f"unknown transforms: {sorted(unknown)}")
    dressed = Dress(text)
    for name, transform in TRANSFORMS.items():
        if name in names:
            dressed = transform(dressed)
    return dressed


def evasive_text(text: str, names: tuple[str, ...] | list[str]) -> str:
    """The text as the text transforms (and HTML, if named) leave it."""
    dressed = dress(text, names)
    return dressed.markup if dressed.markup is not None else dressed.text


def evasive_entity(text: str, names: tuple[str, ...] | list[str]) -> bytes:
    """A MIME entity carrying the dressed text: a short note and the part, CRLF line ends."""
    dressed = dress(text, names)
    part = _part(dressed)
    boundary = f"evasion-{zlib.crc32(repr((text, tuple(names))).encode()):08x}"
    note = "Content-Type: text/plain; charset=utf-8\r\n\r\nNotes from the call below.\r\n"
    entity = (
        (
            f'Content-Type: multipart/mixed; boundary="{boundary}"\r\n\r\n'
            f"--{boundary}\r\n{note}--{boundary}\r\n"
        ).encode()
        + part
        + f"\r\n--{boundary}--\r\n".encode()
    )
    if not dressed.forwarded:
        return entity
    inner = (
        b"From: Someone <someone@example.org>\r\nSubject: the call notes\r\nMIME-Version: 1.0\r\n"
    ) + entity
    outer = "fwd-" + boundary
    return (
        (
            f'Content-Type: multipart/mixed; boundary="{outer}"\r\n\r\n'
            f"--{outer}\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nForwarding this.\r\n"
            f"--{outer}\r\nContent-Type: message/rfc822\r\n"
            'Content-Disposition: attachment; filename="notes.eml"\r\n\r\n'
        ).encode()
        + inner
        + f"\r\n--{outer}--\r\n".encode()
    )


def evasive_payload(
    text: str,
    names: tuple[str, ...] | list[str],
    *,
    sender: str = "someone@example.org",
    to: str = "friend@example.com",
    subject: str = "notes",
) -> bytes:
    """A whole message (header section and `evasive_entity`), CRLF line ends."""
    headers = (
        f"From: {sender}\r\nTo: {to}\r\nSubject: {subject}\r\n"
        f"Date: {email.utils.formatdate(0, usegmt=True)}\r\n"
        "Message-ID: <evasion@example.org>\r\nMIME-Version: 1.0\r\n"
    )
    return headers.encode() + evasive_entity(text, names)


def _part(dressed: Dress) -> bytes:
    content = dressed.markup if dressed.markup is not None else dressed.text
    data = content.encode(dressed.encoding)
    ctype = "text/html" if dressed.markup is not None else "text/plain"
    ctype = dressed.content_type or ctype
    transfer = dressed.transfer
    if dressed.gzipped:
        data = gzip.compress(data, mtime=0)
        ctype = dressed.content_type or "application/gzip"
    binary = dressed.gzipped or b"\x00" in data
    if transfer == "8bit" and binary:
        transfer = "base64"
    headers = [f"Content-Type: {ctype}"]
    if ctype.startswith("text/"):
        headers[0] += f'; charset="{dressed.charset}"'
    headers.append(f"Content-Transfer-Encoding: {transfer}")
    if dressed.filename:
        headers.append(f'Content-Disposition: attachment; filename="{dressed.filename}"')
    if transfer == "base64":
        body = base64.encodebytes(data)
    elif transfer == "quoted-printable":
        body = binascii.b2a_qp(data, istext=not binary)
    else:
        body = data
    body = body.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    return (CRLF.join(headers) + CRLF + CRLF).encode() + body


# -- excerpts of the public advisories

_SENTENCE_END = re.compile(r"(?<=[.?!:])\s+")


def advisory_texts() -> dict[str, str]:
    """File name -> the advisory's own text (without the note on where the copy is from)."""
    texts = {}
    for path in sorted(DATA.glob("k8s-CVE-*.txt")):
        text = path.read_text()
        marker = "----- issue body (verbatim) -----"
        texts[path.name] = text.split(marker, 1)[1] if marker in text else text.split("\n\n", 1)[1]
    return texts


def excerpts(rng: random.Random, count: int, *, min_words: int = 40) -> list[tuple[str, str]]:
    """``count`` excerpts (advisory file, text) of 2 to 5 consecutive sentences of prose.

    An excerpt has at least ``min_words`` words: a "sentence" ends at . ? ! and :, so a list
    number or a heading counts as one, and two of those say nothing.
    """
    texts = advisory_texts()
    names = sorted(texts)
    sentences = {name: _SENTENCE_END.split(" ".join(texts[name].split())) for name in names}
    found: list[tuple[str, str]] = []
    while len(found) < count:
        name = names[len(found) % len(names)]
        pool = sentences[name]
        length = rng.randint(2, 5)
        start = rng.randrange(max(1, len(pool) - length))
        text = " ".join(pool[start : start + length])
        if len(text.split()) >= min_words and "```" not in text:
            found.append((name, textwrap.fill(text, 72)))
    return found

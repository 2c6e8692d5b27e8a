"""The one normaliser of text that is compared against embargoed text.

The index of embargoed advisories (relay/leaks/index.py) and every scan go through the matcher
(relay/leaks/matcher.py), and the matcher sees text only through this module, so a quotation is
recognised whatever dress it wears: both sides are folded the same way, and consistency is
what matters. What it undoes, character by character and in this order:

- Unicode compatibility forms (NFKC's mappings: fullwidth, mathematical, ligatures, circled
  letters), applied per character through NFKD. Combining marks (Mn, Me) are then dropped:
  marks stacked on letters are as cheap a dodge as zero-width spaces, and a lost accent
  costs a comparison nothing.
- Default-ignorable code points (the UCD's Default_Ignorable_Code_Point set, as the
  ``regex`` module ships it: zero-width spaces and joiners, the soft hyphen, bidi controls,
  variation selectors, tags) and control characters other than tab and line breaks are
  removed: they are invisible, so they may sit inside a word.
- Every Unicode space (Zs, tab, vertical tab, form feed) becomes one space; line and
  paragraph separators become a newline. Each space stays a space (runs are not merged):
  the letter-spacing rule below reads the gaps.
- Confusable letters are folded to one member of their Unicode TR39 confusable class (the
  ``confusable-homoglyphs`` package ships confusables.txt): Cyrillic and Greek letters that
  look Latin become the Latin letter, a capital the capital. ASCII itself is left alone: it
  is the alphabet the prototypes are written in, and folding ``0``/``o``, ``1``/``l`` or
  ``rn``/``m`` would rewrite ordinary words. A character is looked up before its case is
  folded (Greek capital nu looks like N, its small letter like v), and only a character
  outside every class is case-folded and looked up again.
- Case is folded (``str.casefold`` for the rest of Unicode, ASCII lower case).
- Runs of two or more single characters separated by up to four spaces or a line break
  (with the quoting marks ``>`` and ``|`` a reply puts at a line start) are joined:
  ``e m b a r g o`` becomes ``embargo``. A letter-spaced text keeps its word gaps wider
  than its letter gaps (``" ".join(text)`` puts three spaces there), so a gap over twice the
  narrowest one in its run stays a space and the words come back apart; a gap of more than
  four spaces ends the run. Ordinary text is joined by the same rule wherever it has two
  one-character tokens in a row (``a b``); both the index and the scan do it.

Speed: mail is mostly ASCII. The text is encoded as ASCII with an error handler that folds
each run of other characters (the encoder calls it once per run, so ASCII is copied at the
speed of ``str.encode``); every character's folding is computed once, on first sight, and
cached in a translation table; ASCII is cased and cleaned by one ``bytes.translate``; the
joining rule is one regular expression that starts with a literal. The output is UTF-8.

`normalise_mapped` gives the same bytes with a map back to the original text, so the matcher
can quote a passage in the sender's own wording.
"""

from __future__ import annotations

import codecs
import re
import threading
import unicodedata
from bisect import bisect_right
from dataclasses import dataclass

import regex

__all__ = ["Origins", "fold", "normalise", "normalise_mapped", "normalise_utf8"]

_HANDLER = "relay-normalise"
_IGNORABLE = regex.compile(r"\p{Default_Ignorable_Code_Point}")
_SPACES = frozenset("\t\x0b\x0c")
_LINES = frozenset("\x85\u2028\u2029")
_DROPPED_CATEGORIES = frozenset({"Mn", "Me", "Cc"})
_BIDI_MARKS = str.maketrans("", "", "\u200e\u200f")  # confusables.txt's display aids

# ASCII: upper case to lower, tab / VT / FF to a space; other controls and DEL deleted.
_ASCII_TABLE = bytes(c + 32 if 65 <= c <= 90 else 32 if c in (9, 11, 12) else c for c in range(256))
_ASCII_DELETE = bytes(c for c in range(32) if c not in (9, 10, 11, 12, 13)) + b"\x7f"
_NOT_PLAIN_ASCII = re.compile(r"[^\t\n\r\x0b\x0c\x20-\x7e]+")

# Letter-spacing: two or more one-character tokens, each gap one to four spaces or one line
# break. A reply's quoting marks may follow a break; they are never tokens, so a quoted
# blank line ends the run. Runs are found on the text's shape (x: a token byte, q: a quoting
# mark), where each way a run can start is a pattern beginning with a literal, so the search
# skips ahead at C speed (one pattern beginning "space or newline" is several times slower):
# after a space with a space next (" x ", a token of one character), after a space with a
# line break next, and at a line start unless the run goes on from the line before.
_SHAPE = bytes(
    32 if c in b" \t\x0b\x0c" else c if c in b"\n\r" else 113 if c in b">|" else 120
    for c in range(256)
)
_END = rb"(?=[ \r\n])"  # a token of one character ends here
_NEXT = rb"(?: {1,4}x" + _END + rb"| *\r?\n[q ]*x" + _END + rb")"
_WITHIN = re.compile(rb" x  {0,3}x" + _END + _NEXT + rb"*+")  # after a space, a space next
_ACROSS = re.compile(  # one search of the line breaks for the two other ways
    rb"\n(?:(?:(?<= x\n)|(?<= x\r\n))(?P<after>)[q ]*x" + _END + _NEXT + rb"*+"  # a break next
    rb"|(?<![ \n]x\n)(?<![ \n]x\r\n)x" + _NEXT + rb"++)"  # at a line start
)
_SEPARATORS = re.compile(rb"[\s>|]+")
_GAPS = re.compile(rb"[\s>|]+|[^\s>|]+")


def _joined_run(run: bytes) -> bytes:
    """A run with its letters joined. Where letters are spaced wider than one space, a gap
    over twice the narrowest one is a word gap and stays a space; a line break never is."""
    if b"  " not in run:
        return run.replace(b" ", b"") if b"\n" not in run else _SEPARATORS.sub(b"", run)
    pieces = _GAPS.findall(run)
    widths = [len(gap) for gap in pieces[1::2] if b"\n" not in gap]
    wide = 2 * min(widths, default=1)
    return b"".join(
        piece if n % 2 == 0 else b" " if b"\n" not in piece and len(piece) > wide else b""
        for n, piece in enumerate(pieces)
    )


def _spaced_runs(data: bytes) -> list[tuple[int, int]]:
    """The letter-spaced runs of ``data`` (which starts and ends with a space)."""
    shape = data.translate(_SHAPE)
    within = [(m.start() + 1, m.end()) for m in _WITHIN.finditer(shape)]
    across = [(_run_start(shape, m), m.end()) for m in _ACROSS.finditer(shape)]
    if not across:  # one pattern's matches do not overlap, and come in order
        return within
    found = sorted(within + across)
    runs: list[tuple[int, int]] = []
    for start, end in found:  # a run found again from its middle lies inside the first
        if not runs or start >= runs[-1][1]:
            runs.append((start, end))
    return runs


def _run_start(shape: bytes, match: re.Match[bytes]) -> int:
    if match.group("after") is None:  # at a line start: the token after the break
        return match.start() + 1
    return shape.rindex(b"x", 0, match.start())  # the token before the break


class _Folding(dict[int, str]):
    """Code point -> its folded form, computed on first use (for ``str.translate``)."""

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()
        self._classes: dict[str, str] | None = None

    def __missing__(self, code: int) -> str:
        folded = self._fold(chr(code))
        self[code] = folded
        return folded

    def _fold(self, char: str) -> str:
        text = char
        for _ in range(8):  # a fold may expose another: a decomposition, then a homoglyph
            step = "".join(self._step(c) for c in text)
            if step == text:
                break
            text = step
        return text

    def _step(self, char: str) -> str:
        if char.isascii():
            if char in _SPACES:
                return " "
            return "" if char.encode() in _ASCII_DELETE else char.lower()
        if char in _LINES:
            return "\n"
        if _IGNORABLE.match(char):
            return ""
        category = unicodedata.category(char)
        if category in _DROPPED_CATEGORIES:
            return ""
        if category == "Zs":
            return " "
        if category == "Cs":  # a lone surrogate (undecodable bytes kept by surrogateescape)
            return "\ufffd"
        decomposed = unicodedata.normalize("NFKD", char)
        if decomposed != char:
            return decomposed
        # The class before the case: Greek capital nu looks like N, its small letter like v.
        standing = self.classes().get(char)
        if standing is not None:
            return standing
        return char.casefold()

    def classes(self) -> dict[str, str]:
        """Non-ASCII character -> the member of its confusable class that stands for it."""
        if self._classes is None:
            with self._lock:
                if self._classes is None:
                    self._classes = _confusable_classes()
        return self._classes


def _confusable_classes() -> dict[str, str]:
    # The package keeps confusables.txt as a graph (each line both ways); its connected
    # components are TR39's classes, each a prototype and the characters that map to it.
    from confusable_homoglyphs.confusables import confusables_data

    parent: dict[str, str] = {}

    def root(node: str) -> str:
        while parent.setdefault(node, node) != node:
            parent[node] = parent[parent[node]]
            node = parent[node]
        return node

    for source, entries in confusables_data.items():
        for entry in entries:
            a, b = root(source.translate(_BIDI_MARKS)), root(entry["c"].translate(_BIDI_MARKS))
            if a != b:
                parent[max(a, b)] = min(a, b)
    members: dict[str, list[str]] = {}
    for node in list(parent):
        members.setdefault(root(node), []).append(node)
    classes: dict[str, str] = {}
    for group in members.values():
        small = min(group, key=lambda member: _standing(member, capital=False))
        capital = min(group, key=lambda member: _standing(member, capital=True))
        for member in group:
            chosen = capital if member != member.casefold() else small
            if len(member) == 1 and not member.isascii() and member != chosen:
                classes[member] = chosen.casefold()
    return classes


def _standing(member: str, *, capital: bool) -> tuple[int, int, str]:
    """Which member stands for its class: an ASCII letter of the same case as the character
    mapped (Cyrillic capital I stands with I, not l, though TR39 has one class for I and l),
    then one of the other case, a digit, other ASCII, ASCII strings (``rn``), the rest."""
    if len(member) == 1 and member.isascii():
        same = member.isupper() if capital else member.islower()
        rank = 0 if same else 1 if member.isalpha() else 2 if member.isdigit() else 3
    else:
        rank = 4 if member.isascii() else 5 if len(member) == 1 else 6
    return rank, len(member), member


_FOLDING = _Folding()


def fold(text: str) -> str:
    """The characters of ``text`` folded one by one (no joining of letter-spaced runs)."""
    return text.translate(_FOLDING)


def _fold_run(error: UnicodeError) -> tuple[bytes, int]:
    if not isinstance(error, UnicodeEncodeError):
        raise error
    run = error.object[error.start : error.end]
    return run.translate(_FOLDING).encode("utf-8"), error.end


codecs.register_error(_HANDLER, _fold_run)


def normalise_utf8(text: str) -> bytes:
    """The normalised text, UTF-8 encoded: what the matcher fingerprints."""
    data = text.encode("ascii", _HANDLER).translate(_ASCII_TABLE, _ASCII_DELETE)
    runs = _spaced_runs(b" " + data + b" ")
    if not runs:
        return data
    out, _ = _joined(b" " + data + b" ", runs)
    return out[1:-1]


def normalise(text: str) -> str:
    """The normalised text (see the module's docstring for what that means)."""
    return normalise_utf8(text).decode("utf-8")


_Stretches = tuple[tuple[int, int, int, int], ...]


@dataclass(frozen=True)
class Origins:
    """Where each byte of a normalised text came from in the original text.

    One map per step that changes lengths (folding, then joining), each a sorted tuple of
    replaced stretches ``(out_start, out_end, in_start, in_end)``; between them the step
    copies bytes one for one. Joining works on the text with a space in front, hence the
    shift of one.
    """

    folded: _Stretches
    joined: _Stretches

    def start(self, offset: int) -> int:
        """The original index where the character at ``offset`` of the output begins."""
        return self._back(offset, end=False)

    def end(self, offset: int) -> int:
        """The original index just after the output up to ``offset`` (exclusive)."""
        return self._back(offset, end=True)

    def _back(self, offset: int, *, end: bool) -> int:
        offset = _through(self.joined, offset + 1, end=end)
        return _through(self.folded, offset - 1, end=end)


def _through(stretches: _Stretches, offset: int, *, end: bool) -> int:
    i = bisect_right(stretches, (offset, float("inf"))) - 1
    if i < 0:
        return offset
    out_start, out_end, in_start, in_end = stretches[i]
    if offset >= out_end:
        return in_end + (offset - out_end)
    if offset == out_start:
        return in_start
    return in_end if end else in_start


def normalise_mapped(text: str) -> tuple[bytes, Origins]:
    """``normalise_utf8(text)`` and, for each of its bytes, where it came from in ``text``.

    Slower than `normalise_utf8` (a Python step per run of non-ASCII text and per joined
    run): the matcher uses it only for a text that already shares fingerprints.
    """
    pieces: list[bytes] = []
    folded: list[tuple[int, int, int, int]] = []
    position = written = 0
    for match in _NOT_PLAIN_ASCII.finditer(text):
        plain = text[position : match.start()].encode("ascii")
        replaced = match.group().translate(_FOLDING).encode("utf-8")
        written += len(plain)
        folded.append((written, written + len(replaced), match.start(), match.end()))
        pieces += (plain, replaced)
        written += len(replaced)
        position = match.end()
    pieces.append(text[position:].encode("ascii"))
    data = b" " + b"".join(pieces).translate(_ASCII_TABLE) + b" "
    out, joined = _joined(data, _spaced_runs(data))
    return out[1:-1], Origins(tuple(folded), joined)


def _joined(data: bytes, runs: list[tuple[int, int]]) -> tuple[bytes, _Stretches]:
    """``data`` with the gaps inside each run removed, and the stretches it replaced."""
    stretches: list[tuple[int, int, int, int]] = []
    out: list[bytes] = []
    position = shift = 0
    for start, end in runs:
        run = _joined_run(data[start:end])
        out += (data[position:start], run)
        stretches.append((start - shift, start - shift + len(run), start, end))
        shift += (end - start) - len(run)
        position = end
    out.append(data[position:])
    return b"".join(out), tuple(stretches)

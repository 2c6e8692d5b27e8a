"""Texts as fingerprints: normalise, tokenise, shingle, winnow; the same steps for every
text the matcher indexes or scans (relay/leaks/matcher.py).

Text is compared by winnowing (Schleimer, Wilkerson, Aiken, "Winnowing: local algorithms for
document fingerprinting", SIGMOD 2003) over hashes of word shingles:

- Every text, indexed or scanned, is first normalised by relay/core/normalise.py
  (compatibility forms, invisible characters, Unicode spaces, homoglyphs, case,
  letter-spacing), so a quote matches whatever dress it wears. Tokenising then works on its
  UTF-8 bytes through one translation table: quoting marks (``>``, ``|``), brackets, quotes,
  commas, colons and all other punctuation become spaces, so re-quoting, re-wrapping and
  changed whitespace leave the same words. ``. - / _ @`` stay inside words, so
  ``CVE-2026-1234``, ``v1.30.4``, ``pkg/volume/git_repo.go`` and ``git_repo.SetUp`` stay
  single tokens (a sentence's final period is dropped). English function words and
  one-character tokens are skipped: they carry no evidence, and without them a shingle spans
  about twice as many words of running text.
- A shingle is K consecutive remaining tokens. K = 4 is six to eight words of prose: long
  enough that texts which only share vocabulary (the same topic) rarely share a shingle.
- Winnowing keeps the smallest shingle hash of every window of W shingles. W = 4 keeps about
  2/(W+1) = 40 % of the shingles and guarantees that any shared run of W+K-1 = 7 tokens (about
  a dozen words) yields a shared fingerprint, so three quoted sentences give several. Measured
  on the public Kubernetes advisories: a 50-word excerpt shares 5 to 19 fingerprints with its
  advisory, two different advisories of the same project share at most 4, in passages of at
  most 4: their template ("if you find evidence that this vulnerability has been exploited,
  please contact ...") and CVSS vector.

Hashes are deterministic, so a text scores the same in every process: each token is hashed
once with CRC-32 (in C, over the token's bytes), and a shingle's hash is Python's ``hash`` of the
tuple of its tokens' CRCs, which for integers is unsalted and computed in C. Both stay out of
Python bytecode, which is what makes 20 MB/s possible. The matcher's pre-screen repeats the
shingling inline for that reason, on these same names.
"""

from __future__ import annotations

import re
import zlib

from relay.core.normalise import normalise_utf8

__all__ = [
    "STOP",
    "K",
    "W",
    "blank_punctuation",
    "fingerprints_of",
    "shingle_hashes",
    "token_spans",
    "tokens_of",
    "winnow",
    "word_bytes",
]

K = 4  # tokens per shingle
W = 4  # shingles per winnowing window

_WORD_BYTES = b"abcdefghijklmnopqrstuvwxyz0123456789._-/@"
_TABLE = bytes(
    c + 32 if 65 <= c <= 90 else c if c >= 128 or c in _WORD_BYTES else 32 for c in range(256)
)
_FUNCTION_WORDS = """
about above after all also am an and any are as at be been before being both but by can could did
do does doing down during each few for from further had has have having he her here hers him his
how however if in into is it its itself just more most my no nor not now of off on once only or
other our ours out over own same she should so some such than that the their theirs them then there
these they this those through to too under until up very was we were what when where which while
who whom why will with would you your yours -- --- ---- ----- ------ ------- -------- ... ..
"""
_crc32 = zlib.crc32
# Skipped tokens, by their CRC: the scan never needs a token's bytes hashed twice.
STOP = frozenset(map(_crc32, [w.encode() for w in _FUNCTION_WORDS.split()])) | frozenset(
    _crc32(bytes([c])) for c in _WORD_BYTES
)

# Lines that are a mail's envelope rather than its content, quoted or not: header fields,
# forward banners, attributions, and a signature (its delimiter and up to four lines).
_NOISE = re.compile(
    rb"^[ \t>|]*(?:"
    rb"(?:from|to|cc|bcc|date|sent|subject|reply-to|message-id|in-reply-to|references"
    rb"|return-path|received|mime-version|content-[a-z-]+|x-[a-z0-9-]+)[ \t]*:[^\n]*"
    rb"|-{2,}[ \t]*(?:forwarded|original)[ \t]+message[^\n]*"
    rb"|on [^\n]{0,200}wrote:[ \t\r]*$"
    rb"|--[ \t]?\r?$(?:\n[ \t>|]*\S[^\n]*){0,4}"
    rb")",
    re.IGNORECASE | re.MULTILINE,
)
_TOKEN = re.compile(rb"\S+")


def word_bytes(text: str, *, strip_noise: bool = False) -> bytes:
    """The normalised text's bytes with punctuation and quoting blanked."""
    return blank_punctuation(normalise_utf8(text), strip_noise=strip_noise)


def blank_punctuation(data: bytes, *, strip_noise: bool = False) -> bytes:
    """Normalised bytes with punctuation and quoting blanked; byte offsets are kept."""
    if strip_noise:
        data = _NOISE.sub(lambda m: b" " * len(m.group()), data)
    return (data + b" ").translate(_TABLE).replace(b". ", b"  ")


def tokens_of(data: bytes) -> list[bytes]:
    """The tokens of normalised bytes, function words and single characters skipped."""
    stop = STOP
    return [token for token in data.split() if _crc32(token) not in stop]


def token_spans(data: bytes) -> list[tuple[bytes, int, int]]:
    """The tokens of normalised bytes with their offsets (same tokens as ``tokens_of``)."""
    spans = []
    stop = STOP
    for m in _TOKEN.finditer(data):
        token = m.group()
        if _crc32(token) not in stop:
            spans.append((token, m.start(), m.end()))
    return spans


def shingle_hashes(tokens: list[bytes]) -> list[int]:
    """The hash of every run of K consecutive tokens, in order."""
    crcs = list(map(_crc32, tokens))
    return list(map(hash, zip(*(crcs[i:] for i in range(K)), strict=False)))


def winnow(hashes: list[int]) -> set[int]:
    """The minimum of every window of W shingle hashes (one window if the text is shorter)."""
    if len(hashes) <= W:
        return {min(hashes)} if hashes else set()
    return set(map(min, zip(*(hashes[i:] for i in range(W)), strict=False)))


def fingerprints_of(tokens: list[bytes]) -> set[int]:
    """The winnowed shingle hashes of these tokens: what the index keeps of a text."""
    return winnow(shingle_hashes(tokens))

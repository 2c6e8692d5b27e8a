"""Content matcher: does a message carry embargoed text, even when it names no advisory?

One in-memory index over every embargoed advisory (its bodies and attached patches) answers,
for any text, which advisories it quotes, how strongly, and with which excerpts. The cost of a
scan grows with the size of the text, not with the number of advisories: each fingerprint of the
text is one dictionary lookup, never a loop over advisories. Texts become fingerprints by
winnowing word shingles (relay/leaks/winnowing.py, which says why K and W are what they are).

Scanning has two steps. The pre-screen hashes every shingle of the text and looks it up in a
set of the index's fingerprints (cheaper in pure Python than computing window minima, and a
superset of what winnowing the text would find). These lookups are the part of a scan that
grows with the number of advisories: at 1,000 the set outgrows the CPU caches and most probes
wait on memory. Only a text with at least ``MIN_MATCHED`` hits, or a hit on an identifier, is
analysed: mail headers, forward banners and signatures are dropped, the text is winnowed, and
each advisory is scored.

A score is the share of the text's fingerprints found in that advisory (containment of the
text in the advisory): a short excerpt of a long advisory forwarded with a few lines of its own
scores high, while another advisory of the same project sharing boilerplate scores low. A match
needs ``MIN_MATCHED`` fingerprints and either ``min_score``, or ``STRONG_MATCHED`` fingerprints
(a long quotation inside a long message is a leak whatever its share), or ``QUOTED_RUN`` of them
in one passage of the text: two or three sentences quoted in a reply several times their length
are a leak too, though their share of the message is small. Exact identifiers
(advisory IDs, CVE IDs, the subjects of the relay's messages) match on their own.

The index is never persisted (a shingle's hash may change between Python versions): the relay
rebuilds it from the advisories' texts when it starts.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from itertools import filterfalse

from relay.core.normalise import Origins, normalise, normalise_mapped
from relay.leaks.winnowing import (
    STOP,
    K,
    W,
    blank_punctuation,
    fingerprints_of,
    shingle_hashes,
    token_spans,
    tokens_of,
    winnow,
    word_bytes,
)

MIN_MATCHED = 5  # fewest shared fingerprints that count as quoted text
MIN_SCORE = 0.2  # default share of the text's fingerprints found in one advisory
STRONG_MATCHED = 12  # this many shared fingerprints match whatever their share
QUOTED_RUN = 6  # this many in one passage match too: two or three sentences, above templates
MIN_SUBJECT_TOKENS = 3  # shorter subjects ("Update") say nothing about an advisory
MAX_EXCERPTS = 3
EXCERPT_CHARS = 300

BODY = "body"
ATTACHMENT = "attachment:"

_crc32 = zlib.crc32
_CVE = re.compile(r"\bCVE-\d{4}-\d{4,}\b", re.IGNORECASE)
_REPLY_PREFIX = re.compile(r"^(?:\s*(?:re|fwd?|aw|wg|sv|tr|antw)\s*:|\s*\[[^\]]*\])+", re.I)
_QUOTED_BREAK = re.compile(r"\s*\n[ \t>|]*")
_SPACES = re.compile(r"\s+")


@dataclass(frozen=True)
class Match:
    """One advisory seen in a text.

    ``score`` is the share (0..1) of the text's fingerprints found in the advisory;
    ``identifiers`` lists the advisory IDs, CVE IDs and subjects named; ``excerpts`` are the
    matched passages in the text's own wording; ``sources`` names the advisory's parts that
    matched ("body", "attachment:NAME").
    """

    advisory_id: str
    score: float
    matched_fingerprints: int
    identifiers: tuple[str, ...] = ()
    excerpts: tuple[str, ...] = ()
    sources: tuple[str, ...] = ()


@dataclass(frozen=True)
class _Phrase:
    """An identifier or subject as tokens; it matches where the text has the same run."""

    tokens: tuple[bytes, ...]
    anchor: int  # index of the longest token, the one looked up
    advisory: str  # key of the advisory
    label: str  # as reported, e.g. "CVE-2026-1234" or "subject: ..."
    public_if_seen: bool  # a CVE ID merely mentioned in the body: public text may clear it


@dataclass
class _Advisory:
    advisory_id: str
    documents: list[int] = field(default_factory=list)
    phrases: list[_Phrase] = field(default_factory=list)


@dataclass(frozen=True)
class _Document:
    advisory: str
    source: str
    fingerprints: tuple[int, ...]  # only iterated (remove, ignore): a sixth of a set's memory


class Matcher:
    """An index of embargoed advisories and the scanner of texts against it."""

    def __init__(self) -> None:
        self._advisories: dict[str, _Advisory] = {}
        self._documents: dict[int, _Document] = {}
        self._next_document = 0
        # fingerprint -> document number, or a tuple of them when several documents share it
        self._index: dict[int, int | tuple[int, ...]] = {}
        # the same fingerprints as a set, for the pre-screen: a set probe reads one table slot,
        # a dictionary probe an index slot and then an entry, and nearly all probes miss
        self._keys: set[int] = set()
        self._phrases: dict[bytes, list[_Phrase]] = {}  # anchor token -> phrases
        self._anchors: set[int] = set()  # CRCs of the anchor tokens, for the pre-screen
        self._public: set[int] = set()
        self._public_ids: set[bytes] = set()

    def __len__(self) -> int:
        return len(self._advisories)

    def advisories(self) -> list[str]:
        """The IDs of the advisories indexed, as given to `add`."""
        return [advisory.advisory_id for advisory in self._advisories.values()]

    def __contains__(self, advisory_id: object) -> bool:
        return isinstance(advisory_id, str) and _key(advisory_id) in self._advisories

    def add(
        self,
        advisory_id: str,
        text: str,
        *,
        subjects: Iterable[str] = (),
        identifiers: Iterable[str] = (),
    ) -> None:
        """Index a text of an advisory; calling it again adds further texts and names."""
        advisory = self._advisory(advisory_id)
        self._add_document(advisory, BODY, text)
        named = [advisory_id, *identifiers]
        for subject in subjects:
            named += map(str.upper, _CVE.findall(normalise(subject)))
            self._add_subject(advisory, subject)
        for identifier in named:
            self._add_phrase(advisory, identifier.strip(), identifier.strip(), public=False)
        for cve in set(map(str.upper, _CVE.findall(normalise(text)))):
            self._add_phrase(advisory, cve, cve, public=True)

    def add_attachment(self, advisory_id: str, name: str, text: str) -> None:
        """Index an attachment of an advisory (a patch file), reported as "attachment:NAME"."""
        self._add_document(self._advisory(advisory_id), ATTACHMENT + name, text)

    def remove(self, advisory_id: str) -> None:
        """Forget an advisory (lifted or cancelled); unknown IDs are ignored."""
        advisory = self._advisories.pop(_key(advisory_id), None)
        if advisory is None:
            return
        for number in advisory.documents:
            for fingerprint in self._documents.pop(number).fingerprints:
                self._unindex(fingerprint, number)
        for phrase in advisory.phrases:
            anchor = phrase.tokens[phrase.anchor]
            kept = [p for p in self._phrases[anchor] if p is not phrase]
            if kept:
                self._phrases[anchor] = kept
            else:
                del self._phrases[anchor]
        self._anchors = set(map(_crc32, self._phrases))

    def ignore(self, text: str) -> None:
        """Treat a public text (a template, a lifted advisory) as evidence of nothing.

        Its fingerprints never match, and CVE IDs it mentions no longer match advisories
        that merely mention them too (an advisory's own IDs and subjects still do).
        """
        public = fingerprints_of(tokens_of(word_bytes(text, strip_noise=True)))
        self._public |= public
        touched: set[int] = set()
        for fingerprint in public:
            self._keys.discard(fingerprint)
            touched.update(_numbers(self._index.pop(fingerprint, ())))
        for number in touched:
            document = self._documents[number]
            kept = tuple(filterfalse(public.__contains__, document.fingerprints))
            self._documents[number] = _Document(document.advisory, document.source, kept)
        self._public_ids.update(tokens_of(word_bytes(" ".join(_CVE.findall(normalise(text))))))

    def match(self, text: str, *, min_score: float = MIN_SCORE) -> list[Match]:
        """The advisories this text quotes or names, strongest first."""
        if not self._advisories:
            return []
        data = word_bytes(text)
        crcs = list(filterfalse(STOP.__contains__, map(_crc32, data.split())))
        # a list, not a stream: probed back to back, the CPU overlaps the probes' waits on
        # memory (measured faster at 1,000 advisories, as fast at 10)
        shingles = list(map(hash, zip(*(crcs[i:] for i in range(K)), strict=False)))
        hits = self._keys.intersection(shingles)  # one C loop of set lookups
        named = not self._anchors.isdisjoint(crcs)
        if len(hits) < MIN_MATCHED and not named:
            return []
        return self._analyse(text, data, min_score, named=named)

    # -- analysis of a text that passed the pre-screen

    def _analyse(self, text: str, data: bytes, min_score: float, *, named: bool) -> list[Match]:
        names = self._named(tokens_of(data)) if named else {}
        folded, origins = normalise_mapped(text)
        spans = token_spans(blank_punctuation(folded, strip_noise=True))
        hashes = shingle_hashes([token for token, _, _ in spans])
        fingerprints = winnow(hashes) - self._public
        found: dict[str, set[int]] = {}
        sources: dict[str, set[str]] = {}
        index = self._index
        for fingerprint in fingerprints:
            for number in _numbers(index.get(fingerprint, ())):
                document = self._documents[number]
                found.setdefault(document.advisory, set()).add(fingerprint)
                sources.setdefault(document.advisory, set()).add(document.source)
        matches = []
        for key in found.keys() | names.keys():
            shared = found.get(key, set())
            score = len(shared) / len(fingerprints) if fingerprints else 0.0
            enough = len(shared) >= MIN_MATCHED
            runs = _runs(hashes, shared) if enough else []
            quoted = enough and (
                score >= min_score
                or len(shared) >= STRONG_MATCHED
                or max(len(run.fingerprints) for run in runs) >= QUOTED_RUN
            )
            if not quoted and key not in names:
                continue
            matches.append(
                Match(
                    advisory_id=self._advisories[key].advisory_id,
                    score=round(score, 4),
                    matched_fingerprints=len(shared),
                    identifiers=tuple(sorted(names.get(key, ()))),
                    excerpts=_excerpts(text, origins, spans, runs) if quoted else (),
                    sources=tuple(sorted(sources.get(key, ()))) if quoted else (),
                )
            )
        matches.sort(
            key=lambda m: (-m.score, -m.matched_fingerprints, -len(m.identifiers), m.advisory_id)
        )
        return matches

    def _named(self, tokens: list[bytes]) -> dict[str, set[str]]:
        """Advisory key -> labels of the identifiers and subjects found in these tokens."""
        named: dict[str, set[str]] = {}
        for anchor in self._phrases.keys() & set(tokens):
            for phrase in self._phrases[anchor]:
                if phrase.public_if_seen and phrase.tokens[0] in self._public_ids:
                    continue
                if _occurs(phrase, tokens):
                    named.setdefault(phrase.advisory, set()).add(phrase.label)
        return named

    # -- index maintenance

    def _advisory(self, advisory_id: str) -> _Advisory:
        key = _key(advisory_id)
        if key not in self._advisories:
            self._advisories[key] = _Advisory(advisory_id.strip())
        return self._advisories[key]

    def _add_document(self, advisory: _Advisory, source: str, text: str) -> None:
        tokens = tokens_of(word_bytes(text, strip_noise=True))
        fingerprints = tuple(fingerprints_of(tokens) - self._public)
        number = self._next_document
        self._next_document += 1
        self._documents[number] = _Document(_key(advisory.advisory_id), source, fingerprints)
        advisory.documents.append(number)
        index = self._index
        self._keys.update(fingerprints)
        for fingerprint in fingerprints:
            held = index.get(fingerprint)
            if held is None:
                index[fingerprint] = number
            elif isinstance(held, int):
                index[fingerprint] = (held, number)
            else:
                index[fingerprint] = (*held, number)

    def _unindex(self, fingerprint: int, number: int) -> None:
        kept = tuple(n for n in _numbers(self._index.pop(fingerprint, ())) if n != number)
        if len(kept) == 1:
            self._index[fingerprint] = kept[0]
        elif kept:
            self._index[fingerprint] = kept
        else:
            self._keys.discard(fingerprint)

    def _add_subject(self, advisory: _Advisory, subject: str) -> None:
        core = _REPLY_PREFIX.sub("", subject).strip()
        if len(tokens_of(word_bytes(core))) >= MIN_SUBJECT_TOKENS:
            self._add_phrase(advisory, core, f"subject: {_SPACES.sub(' ', core)}", public=False)

    def _add_phrase(self, advisory: _Advisory, text: str, label: str, *, public: bool) -> None:
        tokens = tuple(tokens_of(word_bytes(text)))
        if not tokens or any(p.label == label for p in advisory.phrases):
            return
        anchor = max(range(len(tokens)), key=lambda i: len(tokens[i]))
        phrase = _Phrase(tokens, anchor, _key(advisory.advisory_id), label, public)
        advisory.phrases.append(phrase)
        self._phrases.setdefault(tokens[anchor], []).append(phrase)
        self._anchors.add(_crc32(tokens[anchor]))


def _key(advisory_id: str) -> str:
    return advisory_id.strip().upper()


def _numbers(held: int | tuple[int, ...]) -> tuple[int, ...]:
    return (held,) if isinstance(held, int) else held


def _occurs(phrase: _Phrase, tokens: list[bytes]) -> bool:
    """Whether the phrase's tokens occur as one run in these tokens."""
    anchor = phrase.tokens[phrase.anchor]
    wanted = list(phrase.tokens)
    position = -1
    while True:
        try:
            position = tokens.index(anchor, position + 1)
        except ValueError:
            return False
        start = position - phrase.anchor
        if start >= 0 and tokens[start : start + len(wanted)] == wanted:
            return True


@dataclass
class _Run:
    """A passage of the text made of shared shingles."""

    first: int  # token index
    last: int
    fingerprints: set[int]


def _runs(hashes: list[int], shared: set[int]) -> list[_Run]:
    """The passages of the text made of shared shingles, in order.

    Gaps under a window are bridged: in a verbatim copy consecutive fingerprints are at most W
    shingles apart, and one changed word breaks only K shingles.
    """
    runs: list[_Run] = []
    for i, value in enumerate(hashes):
        if value not in shared:
            continue
        if runs and i <= runs[-1].last + W:
            runs[-1].last = i + K - 1
            runs[-1].fingerprints.add(value)
        else:
            runs.append(_Run(i, i + K - 1, {value}))
    return runs


def _excerpts(
    text: str, origins: Origins, spans: list[tuple[bytes, int, int]], runs: list[_Run]
) -> tuple[str, ...]:
    """The longest passages of the text made of shared shingles, in the text's own words."""
    longest = sorted(runs, key=lambda run: run.first - run.last)[:MAX_EXCERPTS]
    return tuple(
        _readable(text[origins.start(spans[run.first][1]) : origins.end(spans[run.last][2])])
        for run in sorted(longest, key=lambda run: run.first)
    )


def _readable(passage: str) -> str:
    text = _SPACES.sub(" ", _QUOTED_BREAK.sub(" ", passage)).strip()
    return text if len(text) <= EXCERPT_CHARS else text[: EXCERPT_CHARS - 1].rstrip() + "…"

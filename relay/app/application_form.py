"""The application form: an application to join, read from the Kubernetes distributors
application template (pure: no database, never raises).

The template has a heading "Distributors Application for <distribution>", then bold prompts
for the security alias and the policy's criteria 1-8, each followed by the answer with its
evidence. People edit the prompts, so `parse_application` recognises a prompt by its
number ("**1. ...**", "**Criterion 1**") or by the criterion's key words, and keeps each
answer as written. The alias is the policy's criterion 0; it counts as answered when it
holds an address.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from relay.core import addresses
from relay.core.errors import RelayError

# What each criterion asks (the policy's wording, shortened) and the words that name it
# in a prompt: a prompt names a criterion when every word of one of its groups is in it.
CRITERIA: dict[str, str] = {
    "0": "an actively monitored security email alias",
    "1": "an actively maintained, CNCF certified distribution",
    "2": "a user base not limited to its own organisation",
    "3": "a public track record of fixing security issues",
    "4": "not a downstream or rebuild of another distribution",
    "5": "a participant and active contributor in the community",
    "6": "accepts the embargo policy",
    "7": "willing to contribute back",
    "8": "someone already on the list vouches for it",
}
_KEYWORDS: dict[str, tuple[tuple[str, ...], ...]] = {
    "0": (("alias",), ("security", "email"), ("security", "contact"), ("security", "address")),
    "1": (("certified",), ("conformance",), ("cncf",), ("actively maintained",)),
    "2": (("user base",), ("userbase",), ("own organi",)),
    "3": (("track record",), ("fixing security",)),
    "4": (("downstream",), ("rebuild",)),
    "5": (("contributor",), ("community",), ("participa",)),
    "6": (("embargo",),),
    "7": (("contribute back",), ("contributing back",)),
    "8": (("vouch",),),
}
# Answers that answer nothing, compared without case, emphasis or a final full stop.
_NOT_ANSWERS = {"", "n/a", "na", "tbd", "tba", "todo", "-", "--", "—", "–", "?"}

_COMMENT = re.compile(r"<!--.*?-->", re.S)
_FRONT_MATTER = re.compile(r"\A---\n(.*?)\n---\n", re.S)
_HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.+?)\s*#*\s*$")
_TITLE = re.compile(r"distributors?\s+application\s*(?:for\b|:|-|–|—)\s*(.+)", re.I)
# A line that starts, after a list or quote marker, with bold text; then the rest of the line.
_BOLD_LINE = re.compile(r"^ {0,3}(?:[-*+>]\s+|\d+[.)]\s+)?(\*\*|__)(.+?)\1\s*(.*)$")
_BY_NUMBER = (
    re.compile(r"^(?:criteri(?:on|a)|question)\s*#?\s*([0-8])\b", re.I),
    re.compile(r"^\(?([0-8])(?:[.):](?!\d)|$)"),
)
_ADDRESS = re.compile(r"[A-Za-z0-9._%+'-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+")


@dataclass(frozen=True)
class ParsedApplication:
    distribution: str | None
    alias: str | None
    answers: dict[str, str]  # each criterion that has a prompt: its answer as written
    answered: list[str]  # criteria "0"-"8" with a real answer
    missing: list[str]  # the others: no prompt, or empty, "N/A", "TBD", "-"


def parse_application(text: str) -> ParsedApplication:
    """Read an application written in the shape of the template; never raises."""
    text = _COMMENT.sub("", text.replace("\r\n", "\n"))
    title = None
    if front := _FRONT_MATTER.match(text):
        text = text[front.end() :]
        for line in front.group(1).splitlines():
            key, _, value = line.partition(":")
            if key.strip().lower() == "title" and (named := _TITLE.search(value)):
                title = _distribution(named.group(1).strip().strip("'\""))
    first_h1 = None
    answers: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in text.split("\n"):
        heading = _HEADING.match(line)
        if heading and title is None and (named := _TITLE.search(heading.group(2))):
            title = _distribution(named.group(1))
            current = None
            continue
        prompt, rest = _prompt(line, heading)
        if prompt is not None:
            current = answers.setdefault(prompt, [])
            if current:
                current.append("")  # the same prompt again: its answers are joined
            current.append(rest)
            continue
        if heading and len(heading.group(1)) == 1 and first_h1 is None:
            first_h1 = _distribution(heading.group(2))
            continue
        if current is not None:
            current.append(line.rstrip())
    texts = {number: "\n".join(lines).strip() for number, lines in sorted(answers.items())}
    answered, missing = assess(texts)
    return ParsedApplication(
        distribution=title or first_h1,
        alias=alias_of(texts.get("0", "")),
        answers=texts,
        answered=answered,
        missing=missing,
    )


def assess(answers: dict[str, str]) -> tuple[list[str], list[str]]:
    """Which criteria are answered and which are missing."""
    answered = [n for n in CRITERIA if _answers(n, answers.get(n, ""))]
    return answered, [n for n in CRITERIA if n not in answered]


def alias_of(answer: str) -> str | None:
    """The first valid email address in the alias answer."""
    for found in _ADDRESS.finditer(answer):
        try:
            return addresses.normalise_address(found.group(0).rstrip("."))
        except RelayError:
            continue
    return None


def describe(numbers: list[str]) -> str:
    """Criteria named with what they ask: '4 (not a downstream ...), 7 (...)'."""
    return ", ".join(f"{n} ({CRITERIA[n]})" for n in numbers)


def _answers(number: str, text: str) -> bool:
    if number == "0":
        return alias_of(text) is not None
    return text.strip().strip("*_`~ .").lower() not in _NOT_ANSWERS


def _prompt(line: str, heading: re.Match[str] | None) -> tuple[str | None, str]:
    """The criterion a prompt line names, and the answer written after it on the line."""
    if heading is not None and len(heading.group(1)) > 1:
        label, rest = heading.group(2), ""
    elif bold := _BOLD_LINE.match(line):
        label, rest = bold.group(2), bold.group(3).lstrip(":").strip()
    else:
        return None, ""
    label = " ".join(label.split()).strip()
    for pattern in _BY_NUMBER:
        if numbered := pattern.match(label):
            return numbered.group(1), rest
    lowered = label.lower()
    named = [
        number
        for number, groups in _KEYWORDS.items()
        if any(all(word in lowered for word in group) for group in groups)
    ]
    return (named[0], rest) if len(named) == 1 else (None, "")


def _distribution(value: str) -> str | None:
    name = " ".join(value.replace("`", "").strip(" *_").split())
    return None if not name or name.startswith("<") else name[:200]

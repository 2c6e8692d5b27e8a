"""Per-recipient copy references: who received which copy, readable wherever a copy leaks.

Every delivery gets a reference such as `ER-7K2F-9QXM-3HDT` when it is queued (so a
resend after a crash carries the same one). It travels inside the encryption only, in
the copy's protected headers and in the notice at the top of its body, and it is stored
with the delivery: `relay trace` reads it back out of a leaked text.

Crockford's base32 (no I, L, O or U): a reference survives being read aloud, retyped
or OCR'd, since the look-alikes map back to the same value. 60 random bits: unguessable,
so a leaked reference cannot be forged to blame another member.
"""

from __future__ import annotations

import re
import secrets

PREFIX = "ER"
HEADER = "X-Copy-Reference"
_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_GROUPS, _GROUP_LEN = 3, 4
# Look-alikes as Crockford decodes them.
_READ_AS = str.maketrans({"O": "0", "I": "1", "L": "1"})
_FOUND = re.compile(
    r"\b" + PREFIX + r"-" + r"-".join([r"([0-9A-Za-z]{4})"] * _GROUPS) + r"\b", re.IGNORECASE
)


def new_reference() -> str:
    groups = ("".join(secrets.choice(_ALPHABET) for _ in range(_GROUP_LEN)) for _ in range(_GROUPS))
    return "-".join((PREFIX, *groups))


def find_references(text: str) -> list[str]:
    """The well-formed references in a text, normalised, in order of first appearance."""
    found: list[str] = []
    for match in _FOUND.finditer(text):
        groups = [g.upper().translate(_READ_AS) for g in match.groups()]
        if all(c in _ALPHABET for g in groups for c in g):
            found.append("-".join((PREFIX, *groups)))
    return list(dict.fromkeys(found))

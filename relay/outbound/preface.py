"""The words each copy of a post carries above the post, inside the list's signature and
encryption: the embargo notice, who posted it, whose copy it is; and the header fields
protected with them.

Every line is wrapped at 72 characters, like the rest of the list's mail, the list policy's
own words included (a policy file wraps as its author liked); only a word longer than that
(an address, say) stands on a line of its own, unbroken.
"""

from __future__ import annotations

import functools
import re
import textwrap

from relay.core.times import format_when
from relay.model import Advisory, AdvisoryState

WIDTH = 72
# A line that starts an item of a list ("- ", "* ", "1. ", "2) "): it keeps its own line.
_ITEM = re.compile(r"^\s*(?:[-*\u2022]|\d+[.)])\s+")


def embargo_preface(
    advisory: Advisory, policy_rules_text: str | None = None, *, security_contact: str
) -> str:
    """The short notice at the top of each copy of a post (wording of the list's policy)."""
    if advisory.state == AdvisoryState.LIFTED:
        when = format_when(advisory.lifted_at) if advisory.lifted_at else "its lift"
        lines = [f"Advisory {advisory.id}: the embargo was lifted at {when}; it no longer applies."]
    else:
        if advisory.state == AdvisoryState.CANCELLED:
            head = f"CONFIDENTIAL: advisory {advisory.id} was withdrawn and will not be published."
        elif advisory.lift_at is None:
            head = f"EMBARGOED until further notice (advisory {advisory.id}; no lift time yet)."
        else:
            head = f"EMBARGOED until {format_when(advisory.lift_at)} (advisory {advisory.id})."
        lines = [
            head,
            "Share it only within your team, on a need-to-know basis, and only with people"
            " who agree to the same terms; do not make it public, share it or hint at it.",
            # Broken after the clause, so that what to do stays on one line.
            "If anything leaks, even by mistake,",
            f"tell {security_contact} at once: exactly what leaked and to whom.",
        ]
    text = "".join(wrap(line) for line in lines)
    if policy_rules_text:
        text += wrap(policy_rules_text)
    return text


def protected_fields(advisory: Advisory) -> tuple[tuple[str, str], ...]:
    """Header fields placed inside the encryption of each copy."""
    fields = [("X-Advisory", advisory.id)]
    if advisory.lift_at is not None:
        fields.append(("X-Embargo-Until", advisory.lift_at.strftime("%Y-%m-%dT%H:%M:%SZ")))
    return tuple(fields)


def poster_notes(
    list_address: str, poster: str, signer: str | None, from_mismatch: str | None
) -> list[str]:
    """Who posted the post, by the key the relay verified (and a From that was not theirs)."""
    notes = [
        wrap(
            f"Posted to {list_address} by {poster or 'an authorised sender'}; "
            f"the relay verified the OpenPGP signature of key {signer}."
        )
    ]
    if from_mismatch:
        notes.append(
            wrap(
                f"Note: the post's From header named {from_mismatch}, which is not an "
                "address of the signer."
            )
        )
    return notes


def copy_note(recipient: str, reference: str) -> str:
    """The last lines of every copy's notice: whose copy this is, and its reference."""
    return wrap(f"Copy reference {reference}: this copy was made for {recipient} alone.") + wrap(
        "Each copy the list sends is individual, so a leaked copy can be traced."
    )


@functools.lru_cache(maxsize=256)
def wrap(text: str) -> str:
    """`text` filled at `WIDTH`, each line ending in a newline: paragraphs (split at blank
    lines) keep their breaks, list items start their own lines with a hanging indent, and
    no word is broken (an address longer than the width stands alone).

    Kept for the texts seen last: every copy of a post carries the same notice and policy
    words, and filling them again cost more per copy than the rest of its preparation."""
    paragraphs = re.split(r"\n\s*\n", text.strip())
    return "\n".join("".join(_fill(item) for item in _items(p)) for p in paragraphs)


def _items(paragraph: str) -> list[str]:
    """The lines of a paragraph joined into items: a new item at each list marker."""
    items: list[str] = []
    for line in paragraph.splitlines():
        if items and not _ITEM.match(line):
            items[-1] += " " + line.strip()
        else:
            items.append(line.rstrip())
    return items


def _fill(item: str) -> str:
    marker = _ITEM.match(item)
    indent = " " * len(marker.group(0)) if marker else ""
    return (
        textwrap.fill(
            item,
            WIDTH,
            subsequent_indent=indent,
            break_long_words=False,
            break_on_hyphens=False,
        )
        + "\n"
    )

"""The words each copy of a post carries above the post, inside the list's signature and
encryption: the embargo notice, who posted it, whose copy it is; and the header fields
protected with them.
"""

from __future__ import annotations

import textwrap

from relay.core.times import format_when
from relay.model import Advisory, AdvisoryState


def embargo_preface(
    advisory: Advisory, policy_rules_text: str | None = None, *, security_contact: str
) -> str:
    """The short notice at the top of each copy of a post (wording of the list's policy)."""
    leak = f"If anything leaks, tell {security_contact} at once: exactly what leaked and to whom."
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
            "Share it only within your team, on a need-to-know basis, and only with people",
            "who agree to the same terms; do not make it public, share it or hint at it.",
            leak,
        ]
    if policy_rules_text:
        lines.append(policy_rules_text.strip())
    return "\n".join(lines) + "\n"


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
        f"Posted to {list_address} by {poster or 'an authorised sender'}; "
        f"the relay verified the OpenPGP signature of key {signer}.\n"
    ]
    if from_mismatch:
        notes.append(
            f"Note: the post's From header named {from_mismatch}, which is not an "
            "address of the signer.\n"
        )
    return notes


def copy_note(recipient: str, reference: str) -> str:
    """The last lines of every copy's notice: whose copy this is, and its reference."""
    line = f"Copy reference {reference}: this copy was made for {recipient} alone."
    wrapped = textwrap.fill(line, 72, break_long_words=False, break_on_hyphens=False)
    return f"{wrapped}\nEach copy the list sends is individual, so a leaked copy can be traced.\n"

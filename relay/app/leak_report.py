"""The words of a leak report to the security contact: what leaked, to whom, who sent it,
against whom it is recorded, and what the list's policy asks.

Everything in it that came from outside (subjects, addresses, names, excerpts) is printed
flat: controls become spaces, so a crafted value cannot forge lines of the report.
"""

from __future__ import annotations

import textwrap
from typing import Any

from relay.core.times import format_when
from relay.model import (
    Advisory,
    AdvisoryState,
    Incident,
    IncidentKind,
    Member,
    Message,
    MessageKind,
)
from relay.store import delivery_queue

# The policy's own words (Private Distributors List, Embargo Policy).
POLICY_WARNING = "Repeated offenses may lead to the removal from the distributors list."

_WHAT_HAPPENED = {
    IncidentKind.FORWARD_BLOCKED: "The relay blocked these addresses: nothing about the "
    "advisory reached them.",
    IncidentKind.FORWARD_FLAGGED: "The list's policy flags rather than blocks: nothing about "
    "the advisory reached these addresses either, and the sender was not told.",
    IncidentKind.EXTERNAL_CC: "These addresses were in the message's To or Cc: the sender's "
    "own mail system delivers to them, so they may have received it.",
    IncidentKind.CONTENT_MATCH: "The message quotes the advisory's embargoed text.",
    IncidentKind.REPORTED_BY_ADMIN: "An administrator recorded this leak, learnt of by "
    "other means.",
}


def report_text(
    incident: Incident,
    advisory: Advisory | None,
    member: Member | None,
    count: int,
    message: Message | None,
    rule: str | None = None,
) -> str:
    """What leaked, to whom, who sent it, against whom it is recorded, and the policy."""
    lines = [
        f"Leak report: incident {incident.id}, recorded {format_when(incident.at)}",
        *textwrap.wrap(f"Kind: {incident.kind}. {_WHAT_HAPPENED[IncidentKind(incident.kind)]}", 76),
        *([f"Decided by the list's forwarding rule '{rule}'."] if rule else []),
        "",
        "WHAT LEAKED",
        *_advisory_lines(incident.advisory_id, advisory),
        f"  Message:  {_message(incident.message_id, message)}",
    ]
    if incident.matched:
        lines += _evidence_lines(incident.matched)
    if incident.note:
        by_admin = incident.recorded_by != delivery_queue.RELAY_ACTOR
        label = "Administrator's account:" if by_admin else "What the relay did:"
        lines += ["", f"  {label}", *_indented(incident.note, "    ")]
    lines += ["", "TO WHOM", *(f"  {_flat(r)}" for r in incident.recipients)]
    lines += ["", "SENT BY", f"  {_flat(incident.sender)}"]
    lines += ["", "RECORDED AGAINST"]
    if member is None:
        lines.append("  No member: the relay could not tell which member this came from.")
    else:
        lines += [
            f"  Member {member.address} ({_flat(member.name)}, {member.state})",
            f"  Incidents recorded against this member: {count} (this one included)",
        ]
    lines += [
        "",
        "The list's policy: a leak must be reported at once, saying exactly what information",
        "leaked and to whom, and the steps that will be taken to prevent future leaks.",
        POLICY_WARNING,
        "",
        f"When it is dealt with: relay incidents resolve {incident.id} --note TEXT",
    ]
    if member is not None:
        lines.append(f"This member's incidents: relay incidents --member {member.address}")
    return "\n".join(lines) + "\n"


def _advisory_lines(named: str, advisory: Advisory | None) -> list[str]:
    if advisory is None:
        return [
            f"  Advisory: {_flat(named)}: not on the list; the post that would have opened it",
            "            was refused",
        ]
    return [
        f"  Advisory: {advisory.id}: {_flat(advisory.title) or '(no title)'}",
        f"            {_embargo(advisory)}",
    ]


def _embargo(advisory: Advisory) -> str:
    if advisory.state == AdvisoryState.LIFTED and advisory.lifted_at is not None:
        return f"lifted {format_when(advisory.lifted_at)}"
    if advisory.state != AdvisoryState.EMBARGOED:
        return str(advisory.state)
    if advisory.lift_at is None:
        return "embargoed until further notice"
    return f"embargoed until {format_when(advisory.lift_at)}"


def _message(message_id: str | None, message: Message | None) -> str:
    if message_id is None:
        return "none passed through the relay"
    if message is None:
        return f"relay message {message_id}"
    what = "refused post, kept as evidence" if message.kind == MessageKind.REFUSED else "message"
    return (
        f'relay {what} {message.id}, "{_flat(message.subject)}", signed by '
        f"{_flat(message.poster) or 'unknown'} (key {message.signer_fingerprint or 'none'}), "
        f"envelope sender {_flat(message.mail_from) or 'none'}, "
        f"received {format_when(message.received_at)}"
    )


def _evidence_lines(matched: dict[str, Any]) -> list[str]:
    lines = [
        f"  Match:    score {matched['score']:.2f} (share of the message's text found in the "
        f"advisory), {matched['matched_fingerprints']} fingerprint(s)",
    ]
    if matched.get("identifiers"):
        lines.append(f"            named: {', '.join(_flat(i) for i in matched['identifiers'])}")
    if matched.get("sources"):
        lines.append(f"            advisory parts: {', '.join(matched['sources'])}")
    excerpts = matched.get("excerpts") or []
    if excerpts:
        lines += ["", "  Matched excerpts, as they appear in the message:"]
        for excerpt in excerpts:
            lines += ["", *_indented(excerpt, "    > ")]
    return lines


def _indented(text: str, prefix: str) -> list[str]:
    out: list[str] = []
    for paragraph in _printable(text).splitlines() or [""]:
        wrapped = textwrap.wrap(paragraph, 72, break_long_words=False, break_on_hyphens=False)
        out += [prefix + line for line in wrapped or [""]]
    return out


def _printable(text: str) -> str:
    """Text as a mail body may carry it: controls other than line breaks become spaces."""
    return "".join(c if c.isprintable() or c == "\n" else " " for c in text.replace("\r\n", "\n"))


def _flat(value: str) -> str:
    """One line of untrusted text (a subject, an address) for the report."""
    return " ".join(_printable(value).split())

"""Copies a post's own mail system sent to addresses outside the list.

A post addressed to the list and, in the same message, to someone else (To, Cc, Bcc,
Resent-*, or an address a reply would go to) has already reached that someone by the time
the relay sees it: the poster's mail system delivered it. The relay cannot block those
copies; it can refuse the post and it must report the leak (relay/app/incidents.py). Which
advisories leaked is decided on what the post carries, not on what it claims:

- the advisory it names, if still under embargo;
- every embargoed advisory whose text it quotes, however dressed (relay/leaks/content.py reads
  every part, relay/core/normalise.py undoes the dress, relay/leaks/index.py holds the index);
- when part of it cannot be read (an encrypted attachment, an archive over the limits),
  every advisory still under embargo: it may be any of them, so it fails closed.

The same check runs for every post, whatever keyword it carries and whatever advisory it
names, and also for a post the relay refuses for another reason: the copies went out all
the same. An address that is not a plain address (relay/core/addresses.py) counts as an
outsider, since nobody can tell where its mail went, and refuses the post with 550 5.1.3.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from email.message import EmailMessage

from sqlalchemy import select
from sqlalchemy.orm import Session

from relay.core import addresses
from relay.leaks.content import Content
from relay.leaks.index import EmbargoedText
from relay.leaks.matcher import Match
from relay.model import Advisory, AdvisoryState, IncidentKind, Member
from relay.policy import forwarding
from relay.store import parties


@dataclass(frozen=True)
class LeakAttempt:
    """A leak the relay found in a post it refuses: recorded after the refusal's rollback,
    so it carries ids, not rows of the rolled-back session."""

    advisory_id: str
    member_id: int | None
    sender: str
    recipients: tuple[str, ...]
    kind: str
    match: Match | None = None
    note: str | None = None
    rule: str | None = None  # the forwarding rule that decided


# Every header field that names someone a copy went to, or a reply would go to.
ADDRESS_FIELDS = (
    "To",
    "Cc",
    "Bcc",
    "Resent-To",
    "Resent-Cc",
    "Resent-Bcc",
    "Reply-To",
    "Mail-Followup-To",
    "Mail-Reply-To",
    "Disposition-Notification-To",
    "Return-Receipt-To",
    "Errors-To",
)


@dataclass(frozen=True)
class Addressed:
    """Who a post is addressed to besides the list: plain addresses, and the values that
    are not plain addresses (with the reason), each an unknown recipient."""

    addresses: tuple[str, ...] = ()
    refused: tuple[tuple[str, str], ...] = ()

    @property
    def recipients(self) -> tuple[str, ...]:
        return self.addresses + tuple(value for value, _ in self.refused)

    def __bool__(self) -> bool:
        return bool(self.addresses or self.refused)


@dataclass(frozen=True)
class Carried:
    """An embargoed advisory a post carries, and the evidence."""

    advisory: Advisory
    match: Match | None = None
    note: str | None = None  # why it counts although nothing matched (unreadable content)


def addressed(message: EmailMessage, protected: dict[str, str], list_address: str) -> Addressed:
    """The post's recipients besides the list, from its outer and its signed header fields."""
    found: list[str] = []
    refused: list[tuple[str, str]] = []
    for name in ADDRESS_FIELDS:
        values = _values(message, name)
        if name.lower() in protected:
            values.append(protected[name.lower()])
        for value in values:
            try:
                found += addresses.from_header(name, value)
            except addresses.AddressRefused as exc:
                refused.append((value.strip()[:200], str(exc)))
    kept = [a for a in dict.fromkeys(found) if a != list_address.lower()]
    return Addressed(tuple(kept), tuple(refused))


def carried(
    session: Session, watch: EmbargoedText, advisory_id: str | None, content: Content
) -> list[Carried]:
    """The embargoed advisories a post carries (see the module's docstring)."""
    text = content.text
    matches = {m.advisory_id: m for m in watch.match(session, text)} if text.strip() else {}
    found: dict[str, Carried] = {}
    if advisory_id is not None:
        named = session.get(Advisory, advisory_id)
        if named is not None and named.state == AdvisoryState.EMBARGOED:
            found[named.id] = Carried(named, matches.pop(named.id, None))
    for other, match in matches.items():
        advisory = session.get(Advisory, other)
        if advisory is not None and advisory.state == AdvisoryState.EMBARGOED:
            found.setdefault(advisory.id, Carried(advisory, match))
    if content.unreadable:
        note = "part of the post could not be read: " + "; ".join(content.unreadable)
        for advisory in session.execute(
            select(Advisory).where(Advisory.state == AdvisoryState.EMBARGOED).order_by(Advisory.id)
        ).scalars():
            found.setdefault(advisory.id, Carried(advisory, note=note))
    return list(found.values())


def leaks(
    session: Session,
    *,
    carried: list[Carried],
    to: Addressed,
    member: Member | None,
    poster: str,
    security_contact: str,
    policy: forwarding.ForwardingPolicy,
    now: datetime,
) -> tuple[list[LeakAttempt], forwarding.Decision | None]:
    """One leak attempt per carried advisory that reached someone who may not read it,
    and the first deciding rule (for the refusal's reply)."""
    found: list[LeakAttempt] = []
    first: forwarding.Decision | None = None
    for item in carried:
        advisory = item.advisory
        kinds = [
            (a, parties.kind_of(session, a, advisory.id, security_contact)) for a in to.addresses
        ]
        kinds += [(value, forwarding.Kind.OUTSIDER) for value, _ in to.refused]
        recipients = [forwarding.Recipient(a, kind, True) for a, kind in kinds]
        decisions = forwarding.decide_all(
            advisory.id,
            embargoed=True,
            lift_at=advisory.lift_at,
            recipients=recipients,
            now=now,
            policy=policy,
        )
        outside = [d for d in decisions if d.verdict != forwarding.Verdict.DELIVER]
        if not outside:
            continue
        first = first or outside[0]
        found.append(
            LeakAttempt(
                advisory_id=advisory.id,
                member_id=member.id if member is not None else None,
                sender=poster,
                recipients=tuple(d.context.recipient.address for d in outside),
                kind=IncidentKind.EXTERNAL_CC,
                match=item.match,
                rule=outside[0].rule,
                note=item.note,
            )
        )
    return found, first


def _values(message: EmailMessage, name: str) -> list[str]:
    """The field's values as sent (unfolded), not as the header registry rebuilds them: the
    registry quietly drops a source route, which is exactly what must be seen."""
    return [
        str(value).replace("\r\n", "").replace("\n", "")
        for key, value in message.raw_items()
        if key.lower() == name.lower()
    ]

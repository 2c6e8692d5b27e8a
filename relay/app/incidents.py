"""Incidents: leaks of an embargoed advisory, recorded and reported to the security contact.

The policy says that whoever shares list information beyond what it allows must inform the
security contact at once of exactly what leaked and to whom, and that repeated offenses may
lead to removal from the list. `record_leak` does both in the caller's transaction: the
incident row (against the member, when known) and a report to `[list] security_contact`.

The report quotes the matched excerpts, which are embargoed text, so it is queued with
plaintext refused: a security contact without a usable key (register it with `relay sender
add`) gets a held delivery, never a readable copy. The audit trail records each incident
without the excerpts. The report's words are leak_report.py's.

Whoever detects a leak (the forwarding policy, the content matcher, an administrator with
`relay incident report`) calls `record_leak`; `relay incidents` lists the incidents and
`relay incidents resolve` closes one with a note. `relay member list` shows the count per
member: every incident counts, resolved or not, because resolving one records what was done
about it, it does not undo it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from relay.app import advisories, leak_report
from relay.core.addresses import normalise_address
from relay.core.config import Settings
from relay.core.crypto import Crypto
from relay.core.database import Database
from relay.core.errors import RelayError
from relay.core.logs import event
from relay.core.times import format_when
from relay.leaks.external_copies import LeakAttempt
from relay.model import (
    Incident,
    IncidentKind,
    Member,
    Message,
    utcnow,
)
from relay.store import audit, delivery_queue, incoming, key_owners, notices
from relay.store.spool import Spool

if TYPE_CHECKING:
    from relay.leaks.matcher import Match

log = logging.getLogger("relay.incidents")


@dataclass(frozen=True)
class IncidentView:
    """An incident for listings: the evidence's strength, not the excerpts themselves."""

    id: int
    at: datetime
    advisory_id: str
    member: str | None
    sender: str
    recipients: list[str]
    kind: str
    message_id: str | None
    score: float | None
    identifiers: list[str]
    excerpts: int
    note: str | None
    recorded_by: str
    report_message_id: str | None
    resolved_at: datetime | None
    resolved_by: str | None
    resolution: str | None


@dataclass(frozen=True)
class Reported:
    """An incident an administrator recorded, and what became of its report."""

    incident: IncidentView
    member_incidents: int
    contact_problem: str | None = None  # why the report is held, if the contact has no key


# Recording


def record_refusal(
    db: Database,
    spool: Spool,
    settings: Settings,
    post: incoming.Post,
    *,
    leaks: Iterable[LeakAttempt],
    now: datetime,
) -> list[int]:
    """Report the leaks of a refused post: the post is kept as their evidence (never
    delivered), each leak becomes an incident with its report, in one transaction.

    The policy wants every leak reported, refused or not; if this cannot commit, the
    caller answers 451 rather than a refusal the report never followed."""
    leaks = list(leaks)
    recorded: list[int] = []

    def record(session: Session, spool: Spool, message_id: str) -> None:
        for leak in leaks:
            incident = record_attempt(session, spool, settings, leak, message_id, now)
            recorded.append(incident.id)

    incoming.keep_refused(db, spool, post, advisory_id=leaks[0].advisory_id, record=record)
    return recorded


def record_attempt(
    session: Session,
    spool: Spool,
    settings: Settings,
    leak: LeakAttempt,
    message_id: str | None,
    now: datetime,
) -> Incident:
    """`record_leak` for a leak the post router found, in the caller's transaction."""
    member = session.get(Member, leak.member_id) if leak.member_id is not None else None
    return record_leak(
        session,
        spool,
        settings,
        advisory_id=leak.advisory_id,
        member=member,
        sender=leak.sender,
        recipients=leak.recipients,
        kind=leak.kind,
        message_id=message_id,
        match=leak.match,
        now=now,
        note=leak.note,
        rule=leak.rule,
    )


def record_leak(
    session: Session,
    spool: Spool,
    settings: Settings,
    *,
    advisory_id: str,
    member: Member | None,
    sender: str,
    recipients: Iterable[str],
    kind: str,
    message_id: str | None,
    match: Match | None,
    now: datetime,
    note: str | None = None,
    actor: str = delivery_queue.RELAY_ACTOR,
    rule: str | None = None,
) -> Incident:
    """Record a leak and queue its report to the security contact, in the caller's transaction.

    `member` is who leaked, when known; `sender` the address that sent it; `recipients` to
    whom; `match` the matcher's evidence, if the content gave it away; `rule` the
    forwarding rule that decided, when one did.
    """
    try:
        kind = IncidentKind(kind)
    except ValueError:
        raise RelayError(f"unknown incident kind {kind!r}") from None
    to = list(dict.fromkeys(r.strip().lower() for r in recipients if r.strip()))
    if not to:
        raise RelayError("a leak report must say to whom it leaked")
    # None when the leaking post was refused before the advisory it opens was created.
    advisory = advisories.find(session, advisory_id)
    named = advisory.id if advisory is not None else advisory_id.strip()
    if match is not None and match.advisory_id.upper() != named.upper():
        raise ValueError(f"the match is for {match.advisory_id}, not {named}")
    incident = Incident(
        at=now,
        advisory_id=named,
        member=member,
        sender=sender.strip().lower(),
        recipients=to,
        kind=kind,
        message_id=message_id,
        matched=_evidence(match) if match is not None else None,
        note=note,
        recorded_by=actor,
    )
    session.add(incident)
    session.flush()  # the id and the member's count include this incident
    count = _count(session, member) if member is not None else 0
    message = session.get(Message, message_id) if message_id else None
    lst = settings.list
    incident.report_message_id = notices.enqueue_advisory_notice(
        session,
        spool,
        recipients=[lst.security_contact],
        subject=f"[{lst.name}] Leak report: {named} ({kind}), incident {incident.id}",
        text=leak_report.report_text(incident, advisory, member, count, message, rule),
        list_domain=lst.domain,
        reason=f"incident {incident.id}",
        advisory_id=advisory.id if advisory is not None else None,
        plaintext_allowed=False,  # the report quotes embargoed text
    )
    audit.record(
        session,
        actor,
        "incident.recorded",
        _subject(incident),
        incident=incident.id,
        advisory=named,
        kind=str(kind),
        member=member.address if member else None,
        sender=incident.sender,
        recipients=to,
        message=message_id,
        score=incident.matched["score"] if incident.matched else None,
        excerpts=len(match.excerpts) if match is not None else 0,  # how many, never the text
        report=incident.report_message_id,
        rule=rule,
    )
    event(
        log,
        "incident.recorded",
        level=logging.WARNING,
        id=incident.id,
        advisory=named,
        kind=kind,
        member=member.address if member else "-",
        recipients=len(to),
    )
    return incident


def report_by_admin(
    db: Database,
    spool: Spool,
    crypto: Crypto,
    settings: Settings,
    *,
    advisory_id: str,
    member_address: str,
    recipients: Iterable[str],
    note: str,
    actor: str,
    sender: str | None = None,
    now: datetime | None = None,
) -> Reported:
    """Record a leak an administrator learnt of by other means (`relay incident report`)."""
    note = note.strip()
    if not note:
        raise RelayError("say what leaked and how with --note")
    address = normalise_address(member_address)
    to = [normalise_address(r) for r in recipients]
    from_ = normalise_address(sender) if sender else address
    with db.transaction() as session:
        member = _member(session, address)
        incident = record_leak(
            session,
            spool,
            settings,
            advisory_id=advisories.get(session, advisory_id).id,  # an advisory of this list
            member=member,
            sender=from_,
            recipients=to,
            kind=IncidentKind.REPORTED_BY_ADMIN,
            message_id=None,
            match=None,
            now=now or utcnow(),
            note=note,
            actor=actor,
        )
        problem = contact_problem(session, crypto, settings)
        return Reported(_view(incident), _count(session, member), problem)


def contact_problem(session: Session, crypto: Crypto, settings: Settings) -> str | None:
    """Why reports to the security contact are held, or None if it has a usable key."""
    contact = settings.list.security_contact
    known = key_owners.sender_by_address(session, contact)
    if known is None:
        return f"{contact} is not registered with a key; add it with 'relay sender add'"
    _, problem = key_owners.usable_keys(crypto, [k.fingerprint for k in known.keys])
    return None if problem is None else f"{contact} has no usable key: {problem}"


# Reading and resolving


def list_incidents(
    db: Database, *, member: str | None = None, advisory_id: str | None = None
) -> list[IncidentView]:
    """Incidents, oldest first, optionally of one member and/or one advisory."""
    with db.transaction() as session:
        query = select(Incident).order_by(Incident.at, Incident.id)
        if member is not None:
            address = normalise_address(member)
            query = query.where(Incident.member_id == _member(session, address).id)
        if advisory_id is not None:
            query = query.where(func.upper(Incident.advisory_id) == advisory_id.strip().upper())
        return [_view(i) for i in session.execute(query).scalars()]


def resolve(
    db: Database, incident_id: int, note: str, actor: str, now: datetime | None = None
) -> IncidentView:
    """Close an incident with what was done about it (the steps the policy asks for)."""
    note = note.strip()
    if not note:
        raise RelayError("say how the incident was resolved with --note")
    with db.transaction() as session:
        incident = session.get(Incident, incident_id)
        if incident is None:
            raise RelayError(f"no incident {incident_id}")
        if incident.resolved_at is not None:
            raise RelayError(
                f"incident {incident_id} was already resolved on "
                f"{format_when(incident.resolved_at)} by {incident.resolved_by}"
            )
        incident.resolved_at = now or utcnow()
        incident.resolved_by, incident.resolution = actor, note
        audit.record(
            session,
            actor,
            "incident.resolved",
            _subject(incident),
            incident=incident.id,
            advisory=incident.advisory_id,
            reason=note,
        )
        return _view(incident)


# Helpers


def _member(session: Session, address: str) -> Member:
    found = session.execute(select(Member).where(Member.address == address)).scalar_one_or_none()
    if found is None:
        raise RelayError(f"no member {address}")
    return found


def _count(session: Session, member: Member) -> int:
    query = select(func.count()).select_from(Incident).where(Incident.member_id == member.id)
    return session.scalar(query) or 0


def _subject(incident: Incident) -> str:
    """Filed under the member when known, so the incident shows in its history."""
    if incident.member is not None:
        return incident.member.address
    return advisories.subject(incident.advisory_id)


def _evidence(match: Match) -> dict[str, Any]:
    return {
        "score": round(match.score, 4),
        "matched_fingerprints": match.matched_fingerprints,
        "identifiers": list(match.identifiers),
        "excerpts": list(match.excerpts),
        "sources": list(match.sources),
    }


def _view(incident: Incident) -> IncidentView:
    matched = incident.matched or {}
    return IncidentView(
        id=incident.id,
        at=incident.at,
        advisory_id=incident.advisory_id,
        member=incident.member.address if incident.member else None,
        sender=incident.sender,
        recipients=list(incident.recipients),
        kind=incident.kind,
        message_id=incident.message_id,
        score=matched.get("score"),
        identifiers=list(matched.get("identifiers", [])),
        excerpts=len(matched.get("excerpts", [])),
        note=incident.note,
        recorded_by=incident.recorded_by,
        report_message_id=incident.report_message_id,
        resolved_at=incident.resolved_at,
        resolved_by=incident.resolved_by,
        resolution=incident.resolution,
    )

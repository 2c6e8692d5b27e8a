"""Contributing back: how far each member got with each advisory, and reminders to answer.

The policy asks members to review or test the patches of an advisory and tell the list,
even when they found nothing. Each member has one status per advisory (none,
acknowledged, reviewing, tested-no-issues, issue-found with text), set by an
administrator or by the member's signed reply (`X-Status: tested-no-issues`): both call
`set_status` in their own transaction. The change is audited under the advisory, with the
length of the text only, because a finding is as confidential as the advisory.

`send_status_reminders` (daily, or with the embargo checks) reminds the members who
received an advisory and have not answered `[members] status_reminder_before` its lift,
once per advisory and member: `status_reminders` has a unique key, committed with the
notice.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from relay.app import advisories
from relay.app.transactions import in_transaction
from relay.core.config import Settings
from relay.core.database import Database
from relay.core.errors import RelayError
from relay.core.logs import event
from relay.core.times import countdown, format_when
from relay.model import (
    Advisory,
    AdvisoryState,
    Contribution,
    ContributionStatus,
    Delivery,
    DeliveryStatus,
    Member,
    MemberState,
    Message,
    MessageKind,
    StatusReminder,
    utcnow,
)
from relay.store import audit, notices
from relay.store.spool import Spool

log = logging.getLogger("relay.contributions")

MAX_TEXT = 4000  # characters; a finding's details belong in a post, not in a status


@dataclass(frozen=True)
class StatusChange:
    advisory_id: str
    member: str
    old: str
    new: str
    changed: bool


@dataclass(frozen=True)
class StatusRow:
    member: str
    name: str
    member_state: str
    status: str
    text: str | None
    updated_at: datetime | None
    updated_by: str | None


@dataclass(frozen=True)
class StatusReport:
    advisory_id: str
    title: str
    state: str
    lift_at: datetime | None
    rows: list[StatusRow]

    @property
    def counts(self) -> dict[str, int]:
        found = Counter(r.status for r in self.rows)
        return {s.value: found.get(s.value, 0) for s in ContributionStatus}


def parse_status(value: str) -> ContributionStatus:
    """A status as written by people: any case, '_' or ' ' for '-' ('Tested no issues')."""
    word = "-".join(value.strip().lower().replace("_", " ").split())
    try:
        return ContributionStatus(word)
    except ValueError:
        names = ", ".join(s.value for s in ContributionStatus)
        raise RelayError(f"unknown status {value!r}: use one of {names}") from None


def set_status(
    session: Session,
    advisory_id: str,
    member: Member | str,
    status: str,
    text: str | None,
    actor: str,
    now: datetime | None = None,
) -> StatusChange:
    """Record a member's status for an advisory in the caller's transaction.

    Refused for an unknown or withdrawn advisory, a removed member, an unknown status,
    and issue-found without text. Setting what is already recorded changes nothing."""
    advisory = advisories.get(session, advisory_id)
    if advisory.state == AdvisoryState.CANCELLED:
        raise RelayError(f"advisory {advisory.id} was withdrawn")
    if isinstance(member, str):
        address = member.strip().lower()
        found = session.execute(select(Member).where(Member.address == address))
        if (known := found.scalar_one_or_none()) is None:
            raise RelayError(f"no member {address}")
        member = known
    if member.state == MemberState.REMOVED:
        raise RelayError(f"{member.address} is not a member any more")
    new = parse_status(status)
    text = (text or "").strip() or None
    if new == ContributionStatus.ISSUE_FOUND and text is None:
        raise RelayError("issue-found needs a text saying what was found")
    if text is not None and len(text) > MAX_TEXT:
        raise RelayError(f"the text is too long ({len(text)} characters, at most {MAX_TEXT})")
    row = session.execute(
        select(Contribution).where(
            Contribution.advisory_id == advisory.id, Contribution.member_id == member.id
        )
    ).scalar_one_or_none()
    old = row.status if row else ContributionStatus.NONE.value
    if row is not None and (row.status, row.text) == (new.value, text):
        return StatusChange(advisory.id, member.address, old, new.value, changed=False)
    if row is None:
        row = Contribution(advisory_id=advisory.id, member_id=member.id)
        session.add(row)
    row.status, row.text = new.value, text
    row.updated_at, row.updated_by = now or utcnow(), actor
    audit.record(
        session,
        actor,
        "advisory.status",
        advisories.subject(advisory.id),
        member=member.address,
        old=old,
        new=new.value,
        text_chars=len(text) if text else None,
    )
    return StatusChange(advisory.id, member.address, old, new.value, changed=True)


def set_member_status(
    db: Database, advisory_id: str, member: str, status: str, text: str | None, actor: str
) -> StatusChange:
    """An administrator's `set_status`, in a transaction of its own."""
    with db.transaction() as session:
        change = set_status(session, advisory_id, member, status, text, actor)
    if change.changed:
        event(log, "advisory.status", advisory=change.advisory_id, member=change.member)
    return change


def status_rows(session: Session, advisory_id: str) -> list[StatusRow]:
    """The matrix for one advisory: every active member, and every other member that
    received one of its posts or answered, with its status ("none" if it has not)."""
    recorded = {
        c.member_id: c
        for c in session.execute(
            select(Contribution).where(Contribution.advisory_id == advisory_id)
        ).scalars()
    }
    received = (
        select(Delivery.member_id)
        .join(Message, Message.id == Delivery.message_id)
        .where(Delivery.advisory_id == advisory_id, Message.kind == MessageKind.POST)
    )
    members = session.execute(
        select(Member)
        .where(
            or_(
                Member.state == MemberState.ACTIVE,
                Member.id.in_(received),
                Member.id.in_(list(recorded)),
            )
        )
        .order_by(Member.address)
    ).scalars()
    rows = []
    for m in members:
        c = recorded.get(m.id)
        rows.append(
            StatusRow(
                member=m.address,
                name=m.name,
                member_state=m.state,
                status=c.status if c else ContributionStatus.NONE.value,
                text=c.text if c else None,
                updated_at=c.updated_at if c else None,
                updated_by=c.updated_by if c else None,
            )
        )
    return rows


def status_report(db: Database, advisory_id: str) -> StatusReport:
    with db.transaction() as session:
        advisory = advisories.get(session, advisory_id)
        rows = status_rows(session, advisory.id)
        return StatusReport(advisory.id, advisory.title, advisory.state, advisory.lift_at, rows)


# Reminders


def send_status_reminders(
    db: Database, spool: Spool, settings: Settings, now: datetime
) -> list[str]:
    """Remind members who received an embargoed advisory and have not answered, once the
    lift is `[members] status_reminder_before` away; returns '<ID>:<address>' per member."""
    before = settings.members.status_reminder_before
    with db.transaction() as session:
        due = [
            *session.execute(
                select(Advisory)
                .where(
                    Advisory.state == AdvisoryState.EMBARGOED,
                    Advisory.lift_at.is_not(None),
                    Advisory.lift_at > now,
                    Advisory.lift_at <= now + before,
                )
                .order_by(Advisory.lift_at, Advisory.id)
            ).scalars()
        ]
    reminded: list[str] = []
    for advisory in due:

        def work(session: Session, spool: Spool, advisory: Advisory = advisory) -> list[str]:
            return _remind(session, spool, settings, advisory, now)

        try:
            addresses = in_transaction(db, spool, work)
        except IntegrityError:  # recorded meanwhile by another caller: that one sent them
            continue
        reminded += [f"{advisory.id}:{address}" for address in addresses]
        if addresses:
            event(log, "status reminded", advisory=advisory.id, members=len(addresses))
    return reminded


def _remind(
    session: Session, spool: Spool, settings: Settings, advisory: Advisory, now: datetime
) -> list[str]:
    answered = select(Contribution.member_id).where(
        Contribution.advisory_id == advisory.id,
        Contribution.status != ContributionStatus.NONE,
    )
    reminded = select(StatusReminder.member_id).where(StatusReminder.advisory_id == advisory.id)
    received = (
        select(Delivery.member_id)
        .join(Message, Message.id == Delivery.message_id)
        .where(
            Delivery.advisory_id == advisory.id,
            Message.kind == MessageKind.POST,
            Delivery.status == DeliveryStatus.SENT,
        )
    )
    members = [
        *session.execute(
            select(Member)
            .where(
                Member.state == MemberState.ACTIVE,
                Member.id.in_(received),
                Member.id.not_in(answered),
                Member.id.not_in(reminded),
            )
            .order_by(Member.id)
        ).scalars()
    ]
    if not members:
        return []
    lst = settings.list
    message_id, _ = notices.enqueue_member_notice(
        session,
        spool,
        members=members,
        subject=f"[{lst.name}] {advisory.id}: please tell the list how far you got",
        text=_reminder_text(advisory, now),
        list_domain=lst.domain,
        reason=f"status reminder for {advisory.id}",
        advisory_id=advisory.id,
    )
    for member in members:
        session.add(
            StatusReminder(
                advisory_id=advisory.id, member_id=member.id, sent_at=now, message_id=message_id
            )
        )
    session.flush()  # a duplicate fails here, before the caller commits anything
    return [m.address for m in members]


def _reminder_text(advisory: Advisory, now: datetime) -> str:
    assert advisory.lift_at is not None
    named = f"{advisory.id} ({advisory.title})" if advisory.title else advisory.id
    lines = [
        f"The embargo of advisory {named} lifts {countdown(advisory.lift_at, now)}, "
        f"at {format_when(advisory.lift_at)}.",
        "",
        "The list's policy asks every member to contribute back: review or test the",
        "patches and tell the list how far you got, even when you found nothing.",
        "The list has no answer from your team yet.",
        "",
        "Reply to the list, signed, starting with these lines:",
        "",
        f"  X-Advisory: {advisory.id}",
        "  X-Status: acknowledged | reviewing | tested-no-issues | issue-found",
        "",
        "With issue-found, say below those lines what you found.",
    ]
    return "\n".join(lines) + "\n"

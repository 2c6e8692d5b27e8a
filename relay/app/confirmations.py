"""A second look before a signed post shortens an embargo.

Bringing a lift earlier is the one change by mail that cannot be undone: once the lift
has happened, the advisory is public. One signing key, stolen or misused, must not be
enough. So when `[embargo] confirm_earlier_by_mail` is on, a signed post that moves a
lift earlier (or sets the first lift time of an existing advisory, which ends an
embargo that had no end), or asks for an early lift (`X-Lift: now`), only records a
`PendingChange` and tells the senders and the security contact (encrypted), naming the
signer. The change is made by `relay advisory confirm ID`, or by a signed post with
`X-Confirm: ID` from a *different* authorised sender. Moving a lift later needs no
second look and applies at once.

A pending change is superseded by any other change of the lift time that lands first
(`advisories.supersede_pending`), so nobody confirms a request that no longer fits.
Every step is an audit row of the advisory.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from relay.app import advisories, embargo
from relay.core.config import Settings
from relay.core.times import format_when
from relay.model import Advisory, PendingChange, PendingChangeState
from relay.policy.timing import TimingPolicy
from relay.store import audit, notices
from relay.store.key_owners import sender_addresses, sender_for
from relay.store.spool import Spool


class ConfirmationError(advisories.AdvisoryError):
    """Nothing to confirm, or the confirmer may not confirm it."""


@dataclass(frozen=True)
class Confirmed:
    """A pending change that was made: the lift moved (`change`) or happened (`lifted`)."""

    pending: PendingChange
    change: advisories.Change | None = None
    lifted: embargo.Lifted | None = None


def is_earlier(advisory: Advisory, lift_at: datetime | None) -> bool:
    """Would this lift time (None: lift now) shorten the advisory's embargo?"""
    if lift_at is None or advisory.lift_at is None:
        return True
    return lift_at < advisory.lift_at


def pending(session: Session, advisory_id: str) -> list[PendingChange]:
    """The advisory's changes waiting for confirmation, oldest first."""
    return [
        *session.execute(
            select(PendingChange)
            .where(
                PendingChange.advisory_id == advisory_id,
                PendingChange.state == PendingChangeState.PENDING,
            )
            .order_by(PendingChange.id)
        ).scalars()
    ]


def request(
    session: Session,
    spool: Spool,
    settings: Settings,
    advisory: Advisory,
    lift_at: datetime | None,
    *,
    actor: str,
    message_id: str | None,
    now: datetime,
) -> PendingChange:
    """Record a signed request to bring the lift earlier (None: lift now), and tell the
    senders and the security contact. An earlier request of the same kind is replaced."""
    for older in pending(session, advisory.id):
        older.state = PendingChangeState.SUPERSEDED
        older.decided_by, older.decided_at = actor, now
    change = PendingChange(
        advisory_id=advisory.id,
        lift_at=lift_at,
        old_lift_at=advisory.lift_at,
        requested_by=actor,
        requested_at=now,
        message_id=message_id,
        state=PendingChangeState.PENDING,
    )
    session.add(change)
    session.flush()
    audit.record(
        session,
        actor,
        "advisory.change_requested",
        advisories.subject(advisory.id),
        old=_iso(advisory.lift_at),
        new=_iso(lift_at) or "lift now",
        pending=change.id,
    )
    _tell(session, spool, settings, advisory, change)
    return change


def confirm(
    session: Session,
    spool: Spool,
    settings: Settings,
    advisory_id: str,
    *,
    actor: str,
    policy: TimingPolicy,
    now: datetime,
    reason: str | None = None,
) -> Confirmed:
    """Make the advisory's pending change. `actor` must not be the one who asked for it:
    a key confirming its own request would be no second look at all."""
    advisory = advisories.get(session, advisory_id)
    waiting = pending(session, advisory.id)
    if not waiting:
        raise ConfirmationError(f"no change of {advisory.id} waits for confirmation")
    change = waiting[-1]
    if change.requested_by == actor or _same_sender(session, change.requested_by, actor):
        raise ConfirmationError(
            f"the change of {advisory.id} was asked for by {change.requested_by}; "
            "another sender or an administrator must confirm it"
        )
    change.state = PendingChangeState.APPLIED
    change.decided_by, change.decided_at = actor, now
    audit.record(
        session,
        actor,
        "advisory.change_confirmed",
        advisories.subject(advisory.id),
        old=_iso(change.old_lift_at),
        new=_iso(change.lift_at) or "lift now",
        pending=change.id,
        requested_by=change.requested_by,
        reason=reason,
    )
    why = reason or f"asked for by {change.requested_by}, confirmed by {actor}"
    if change.lift_at is None:
        lifted = embargo.lift_now_in(session, spool, settings, advisory.id, actor, why, now)
        return Confirmed(change, lifted=lifted)
    moved = advisories.schedule(session, advisory.id, change.lift_at, actor, why, policy, now)
    if moved.moved:
        embargo.notify_schedule_change(
            session, spool, settings, advisory, moved.old, moved.new, why
        )
    return Confirmed(change, change=moved)


def _same_sender(session: Session, requester: str, confirmer: str) -> bool:
    """Two keys of one registered sender are one person: no second look either."""
    if not (requester.startswith("key:") and confirmer.startswith("key:")):
        return False
    first = sender_for(session, requester.removeprefix("key:"))
    second = sender_for(session, confirmer.removeprefix("key:"))
    return first is not None and second is not None and first.id == second.id


def _tell(
    session: Session, spool: Spool, settings: Settings, advisory: Advisory, change: PendingChange
) -> None:
    lst = settings.list
    recipients = sender_addresses(session, lst.security_contact)
    asked = (
        "to lift the embargo now"
        if change.lift_at is None
        else f"to move the lift to {format_when(change.lift_at)}"
    )
    current = format_when(change.old_lift_at) if change.old_lift_at else "not set"
    text = (
        f"A signed post by {change.requested_by} asks {asked}.\n\n"
        f"  Advisory:          {advisory.id} ({advisory.title})\n"
        f"  Current lift time: {current}\n"
        f"  Asked for:         "
        f"{format_when(change.lift_at) if change.lift_at else 'lift now'}\n\n"
        "This would end the embargo earlier, so it waits for a second look. Nothing\n"
        "changes until another authorised sender confirms it with a signed post whose\n"
        f"first line is 'X-Confirm: {advisory.id}', or an administrator runs\n\n"
        f"  relay advisory confirm {advisory.id}\n\n"
        "If you did not expect this request, tell the security contact at once: the\n"
        "signing key may be misused.\n"
    )
    notices.enqueue_advisory_notice(
        session,
        spool,
        recipients=recipients,
        subject=f"[{lst.name}] {advisory.id}: an earlier lift waits for confirmation",
        text=text,
        list_domain=lst.domain,
        reason=f"earlier lift of {advisory.id} requested",
        advisory_id=advisory.id,
    )


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()

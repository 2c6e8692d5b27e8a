"""Administrative use-cases for advisories: create, schedule, lift, cancel, the public text,
the report of one advisory, and the audit trail.

Like relay/app/admin.py: each function does the whole change in one transaction with its
audit rows, and raises `RelayError` with an administrator-readable message when it
refuses. `relay.cli_advisory` is a thin shell over these functions.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from relay.app import advisories, confirmations, contributions, embargo
from relay.app.transactions import in_transaction
from relay.core.config import Settings
from relay.core.database import Database
from relay.core.errors import RelayError
from relay.core.logs import event
from relay.core.times import WhenError, parse_when
from relay.model import Advisory, AdvisoryState, AuditEvent, Delivery, Message, utcnow
from relay.store import audit
from relay.store.spool import Spool

log = logging.getLogger("relay.admin")


@dataclass(frozen=True)
class AdvisoryView:
    id: str
    title: str
    state: str
    lift_at: datetime | None
    created_by: str
    created_at: datetime
    lifted_at: datetime | None
    public_release: bool
    # Only the length: before the lift the public text is embargoed like the rest.
    public_text_chars: int


@dataclass(frozen=True)
class AdvisoryChange:
    """A create or schedule: the lift time before and after, policy warnings, the notice."""

    advisory: AdvisoryView
    old: datetime | None
    new: datetime | None
    warnings: list[str] = field(default_factory=list)
    notice: str | None = None  # message id of the members' notice, if one was queued

    @property
    def moved(self) -> bool:
        return self.old != self.new


@dataclass(frozen=True)
class AdvisoryDeliveryView:
    recipient: str
    message_id: str
    kind: str  # "post" or "notice"
    status: str
    attempts: int
    last_code: str | None


@dataclass(frozen=True)
class PendingChangeView:
    """A signed request to bring the lift earlier, waiting for confirmation."""

    id: int
    lift_at: datetime | None  # None: lift now
    old_lift_at: datetime | None
    requested_by: str
    requested_at: datetime


@dataclass(frozen=True)
class AdvisoryReport:
    advisory: AdvisoryView
    history: list[audit.AuditView]
    deliveries: list[AdvisoryDeliveryView]
    # Each member's contributing-back status (relay.contributions).
    statuses: list[contributions.StatusRow] = field(default_factory=list)
    pending: list[PendingChangeView] = field(default_factory=list)


# Advisories
#
# Each change commits with its audit row and, when a lift time is set or moved, with the
# encrypted notice to every active member. A running relay's scheduler picks the change up
# at its next `embargo:check`; one that is down does at its next start.


def read_lift_time(text: str, tz: str | None, now: datetime | None = None) -> datetime:
    """An administrator's WHEN (relay.core.times.ACCEPTED_FORMS) in UTC; `tz` zones plain times."""
    try:
        return parse_when(text, default_tz=tz, now=now)
    except WhenError as exc:
        raise RelayError(str(exc)) from None


def create_advisory(
    db: Database,
    spool: Spool,
    settings: Settings,
    advisory_id: str | None,
    title: str,
    lift_at: datetime | None,
    actor: str,
    now: datetime | None = None,
) -> AdvisoryChange:
    """A new embargoed advisory (an ID is assigned if none is given), checked against the
    list's policy; a lift time given here is announced to the members."""
    title = " ".join(title.split())
    if not title:
        raise RelayError("an advisory needs a title")
    policy = advisories.policy_for(settings)
    now = now or utcnow()

    def work(session: Session, spool: Spool) -> AdvisoryChange:
        change = advisories.create(session, advisory_id, title, lift_at, actor, policy, now)
        return _announced(session, spool, settings, change, reason=None)

    view = in_transaction(db, spool, work)
    event(log, "advisory.created", advisory=view.advisory.id, lift_at=view.new)
    return view


def schedule_advisory(
    db: Database,
    spool: Spool,
    settings: Settings,
    advisory_id: str,
    lift_at: datetime,
    actor: str,
    reason: str | None,
    now: datetime | None = None,
) -> AdvisoryChange:
    """Set or move a lift time; refused in the past, for a closed advisory, or against a
    hard rule of the list's policy. Members are told in the same transaction."""
    policy = advisories.policy_for(settings)
    now = now or utcnow()

    def work(session: Session, spool: Spool) -> AdvisoryChange:
        change = advisories.schedule(session, advisory_id, lift_at, actor, reason, policy, now)
        return _announced(session, spool, settings, change, reason)

    view = in_transaction(db, spool, work)
    if view.moved:
        event(log, "advisory.scheduled", advisory=view.advisory.id, old=view.old, new=view.new)
    return view


def lift_advisory(
    db: Database,
    spool: Spool,
    settings: Settings,
    advisory_id: str,
    actor: str,
    reason: str | None,
    now: datetime | None = None,
) -> embargo.Lifted:
    """Lift now (say, the embargo broke): members are told, the public text goes out.
    Happens once; a second call is refused because the advisory is no longer embargoed."""
    done = embargo.lift_now(
        db, spool, settings, advisory_id, actor=actor, reason=reason, now=now or utcnow()
    )
    event(log, "advisory.lifted", advisory=done.advisory_id, notices=len(done.notices))
    return done


def cancel_advisory(
    db: Database, advisory_id: str, actor: str, reason: str | None, now: datetime | None = None
) -> AdvisoryView:
    """Withdraw an embargoed advisory: it will not be lifted nor released publicly."""
    with db.transaction() as session:
        view = _advisory_view(
            advisories.cancel(session, advisory_id, actor, reason, now or utcnow()).advisory
        )
    event(log, "advisory.cancelled", advisory=view.id)
    return view


def set_public_text(db: Database, advisory_id: str, data: bytes, actor: str) -> AdvisoryView:
    """Store the text posted publicly at the lift (UTF-8) and mark the advisory for release."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RelayError(f"the public text is not UTF-8 (byte {exc.start})") from None
    with db.transaction() as session:
        view = _advisory_view(advisories.set_public_text(session, advisory_id, text, actor))
    event(log, "advisory.public_text", advisory=view.id, chars=view.public_text_chars)
    return view


def list_advisories(db: Database, include_closed: bool = False) -> list[AdvisoryView]:
    """Embargoed advisories (all with `include_closed`) by lift time, unset last."""
    state = None if include_closed else AdvisoryState.EMBARGOED
    with db.transaction() as session:
        return [_advisory_view(a) for a in advisories.list_advisories(session, state)]


def advisory_report(db: Database, advisory_id: str) -> AdvisoryReport:
    """One advisory with its full history and every delivery that names it."""
    with db.transaction() as session:
        advisory = advisories.get(session, advisory_id)
        history = [audit.audit_view(e) for e in advisories.history(session, advisory.id)]
        rows = session.execute(
            select(Delivery, Message.kind)
            .join(Message, Delivery.message_id == Message.id)
            .where(Delivery.advisory_id == advisory.id)
            .order_by(Delivery.recipient, Delivery.id)
        ).all()
        deliveries = [
            AdvisoryDeliveryView(
                recipient=d.recipient,
                message_id=d.message_id,
                kind=kind,
                status=d.status,
                attempts=d.attempts,
                last_code=d.last_code,
            )
            for d, kind in rows
        ]
        statuses = contributions.status_rows(session, advisory.id)
        pending = [
            PendingChangeView(p.id, p.lift_at, p.old_lift_at, p.requested_by, p.requested_at)
            for p in confirmations.pending(session, advisory.id)
        ]
        return AdvisoryReport(_advisory_view(advisory), history, deliveries, statuses, pending)


def confirm_change(
    db: Database,
    spool: Spool,
    settings: Settings,
    advisory_id: str,
    actor: str,
    reason: str | None = None,
    now: datetime | None = None,
) -> tuple[PendingChangeView, AdvisoryView]:
    """Make the change a signed post asked for and that waits for a second look: the
    earlier lift time (members are told) or the early lift."""
    policy = advisories.policy_for(settings)
    now = now or utcnow()

    def work(session: Session, spool: Spool) -> tuple[PendingChangeView, AdvisoryView]:
        done = confirmations.confirm(
            session,
            spool,
            settings,
            advisory_id,
            actor=actor,
            policy=policy,
            now=now,
            reason=reason,
        )
        p = done.pending
        view = PendingChangeView(p.id, p.lift_at, p.old_lift_at, p.requested_by, p.requested_at)
        return view, _advisory_view(advisories.get(session, p.advisory_id))

    pending, advisory = in_transaction(db, spool, work)
    event(log, "advisory.change_confirmed", advisory=advisory.id, pending=pending.id)
    return pending, advisory


def audit_trail(
    db: Database, advisory_id: str | None = None, limit: int = 50
) -> list[audit.AuditView]:
    """The newest `limit` audit rows, oldest first; with `advisory_id` only that advisory's."""
    if limit < 1:
        raise RelayError("the limit must be at least 1")
    query = select(AuditEvent).order_by(AuditEvent.at.desc(), AuditEvent.id.desc()).limit(limit)
    with db.transaction() as session:
        if advisory_id is not None:
            advisory = advisories.get(session, advisory_id)
            query = query.where(AuditEvent.subject == advisories.subject(advisory.id))
        return [audit.audit_view(e) for e in reversed(session.execute(query).scalars().all())]


def _announced(
    session: Session,
    spool: Spool,
    settings: Settings,
    change: advisories.Change,
    reason: str | None,
) -> AdvisoryChange:
    """The change as a view, with the members' notice queued if the lift time moved."""
    notice = None
    if change.moved:
        notice = embargo.notify_schedule_change(
            session, spool, settings, change.advisory, change.old, change.new, reason
        )
    return AdvisoryChange(
        advisory=_advisory_view(change.advisory),
        old=change.old,
        new=change.new,
        warnings=[str(w) for w in change.warnings],
        notice=notice,
    )


def _advisory_view(a: Advisory) -> AdvisoryView:
    return AdvisoryView(
        id=a.id,
        title=a.title,
        state=a.state,
        lift_at=a.lift_at,
        created_by=a.created_by,
        created_at=a.created_at,
        lifted_at=a.lifted_at,
        public_release=a.public_release,
        public_text_chars=len(a.public_text or ""),
    )

"""The embargo at work: the lift, and the notices to members around it.

The lift happens exactly once however often, or however concurrently, it is called,
because the database decides: it is a conditional UPDATE (`state = 'embargoed'`, one row
or none) in the same transaction as every notice it queues. Callers (the scheduler, the
CLI) may therefore simply call again. Reminders before a lift are in reminders.py.

Notices to members go through the queue like posts: one Delivery per recipient,
encrypted to that recipient, held if it has no usable key. The only plaintext is an
advisory's public text to the public addresses, queued by the lift itself. Times are
shown in UTC with the zone named.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from relay.app import advisories
from relay.app.transactions import in_transaction
from relay.core.config import Settings
from relay.core.database import Database, rowcount
from relay.core.logs import event
from relay.core.times import format_when
from relay.model import Advisory, AdvisoryState
from relay.store import audit, delivery_queue, notices
from relay.store.spool import Spool

log = logging.getLogger("relay.embargo")


@dataclass(frozen=True)
class Lifted:
    """What one lift did."""

    advisory_id: str
    notices: tuple[str, ...]  # message ids queued by the lift
    released: int  # deliveries that were held only for the embargo


# The lift


def lift(
    session: Session,
    spool: Spool,
    settings: Settings,
    advisory_id: str,
    *,
    now: datetime,
    actor: str = delivery_queue.RELAY_ACTOR,
    reason: str | None = None,
    scheduled: datetime | None = None,
) -> Lifted | None:
    """Lift one advisory in the caller's transaction; None if it is not (or no longer)
    embargoed. `scheduled` is the lift time before an early lift, for the notice.

    Make this the transaction's first statement where others may lift at the same
    time: on SQLite a transaction that read first cannot write once another has
    committed."""
    result = session.execute(
        update(Advisory)
        .where(Advisory.id == advisory_id, Advisory.state == AdvisoryState.EMBARGOED)
        .values(state=AdvisoryState.LIFTED, lifted_at=now, updated_at=now)
        .execution_options(synchronize_session=False)
    )
    if rowcount(result) != 1:
        return None
    advisories.supersede_pending(session, advisory_id, actor, now)
    advisory = session.get_one(Advisory, advisory_id, populate_existing=True)
    lst = settings.list
    public = settings.embargo.public_addresses if advisory.public_release else ()
    queued = [
        notices.enqueue_list_notice(
            session,
            spool,
            subject=f"[{lst.name}] {advisory.id}: embargo lifted",
            text=_lift_text(advisory, scheduled or advisory.lift_at, now, reason, public),
            list_domain=lst.domain,
            reason=f"{advisory.id} lifted",
            advisory_id=advisory.id,
        )[0]
    ]
    if public and advisory.public_text:
        queued.append(
            notices.enqueue_advisory_notice(
                session,
                spool,
                recipients=public,
                subject=public_subject(advisory),
                text=advisory.public_text,
                list_domain=lst.domain,
                reason=f"public text of {advisory.id}",
                advisory_id=advisory.id,
                plaintext_allowed=True,
            )
        )
    released = delivery_queue.release_embargo_holds(session, advisory.id, now)
    audit.record(
        session,
        actor,
        "advisory.lifted",
        advisories.subject(advisory.id),
        old=AdvisoryState.EMBARGOED.value,
        new=AdvisoryState.LIFTED.value,
        lift_at=_iso(advisory.lift_at),
        reason=reason,
        public_to=[*public] or None,
        released=released,
    )
    return Lifted(advisory.id, tuple(queued), released)


def lift_due(db: Database, spool: Spool, settings: Settings, now: datetime) -> list[str]:
    """Lift every embargoed advisory whose lift time has come; returns the IDs lifted here."""
    with db.transaction() as session:
        due = [
            *session.execute(
                select(Advisory.id)
                .where(Advisory.state == AdvisoryState.EMBARGOED, Advisory.lift_at <= now)
                .order_by(Advisory.lift_at, Advisory.id)
            ).scalars()
        ]
    lifted = []
    for advisory_id in due:

        def lift_one(
            session: Session, spool: Spool, advisory_id: str = advisory_id
        ) -> Lifted | None:
            return lift(
                session, spool, settings, advisory_id, now=now, reason="the lift time was reached"
            )

        done = in_transaction(db, spool, lift_one)
        if done is not None:
            lifted.append(advisory_id)
            event(log, "lifted", advisory=advisory_id, notices=len(done.notices))
    return lifted


def lift_now(
    db: Database,
    spool: Spool,
    settings: Settings,
    advisory_id: str,
    *,
    actor: str,
    reason: str | None,
    now: datetime,
) -> Lifted:
    """An administrator's early lift: lift time set to now and the lift, in one transaction."""
    return in_transaction(
        db,
        spool,
        lambda session, spool: lift_now_in(
            session, spool, settings, advisory_id, actor, reason, now
        ),
    )


def lift_now_in(
    session: Session,
    spool: Spool,
    settings: Settings,
    advisory_id: str,
    actor: str,
    reason: str | None,
    now: datetime,
) -> Lifted:
    """An early lift in the caller's transaction (an administrator's, or a confirmed request)."""
    change = advisories.lift_now(session, advisory_id, actor, reason, now)
    done = lift(
        session,
        spool,
        settings,
        change.advisory.id,
        now=now,
        actor=actor,
        reason=reason,
        scheduled=change.old,
    )
    if done is None:
        # Another lift committed between our read and our write (two at once).
        raise advisories.AdvisoryClosed(f"advisory {change.advisory.id} is already lifted")
    return done


# Notices to members


def notify_schedule_change(
    session: Session,
    spool: Spool,
    settings: Settings,
    advisory: Advisory,
    old: datetime | None,
    new: datetime | None,
    reason: str | None,
) -> str:
    """Tell every active member (encrypted) that a lift time was set or moved."""
    lst = settings.list
    verb = "set" if old is None else "moved"
    lines = [
        f"The lift time of advisory {advisories.titled(advisory)} has been {verb}.",
        "",
        f"  New lift time: {_when(new)}",
        f"  Old lift time: {_when(old)}",
    ]
    if reason:
        lines.append(f"  Reason: {reason}")
    lines.append("")
    if old is not None and new is not None and new < old:
        lines += ["Note: the embargo now ends EARLIER than before.", ""]
    lines += [
        "Until then, everything about this advisory stays under embargo: share it only",
        "within your team, on a need-to-know basis.",
    ]
    message_id, _ = notices.enqueue_list_notice(
        session,
        spool,
        subject=f"[{lst.name}] {advisory.id}: lift time {verb} to {_when(new)}",
        text="\n".join(lines) + "\n",
        list_domain=lst.domain,
        reason=f"lift time of {advisory.id} {verb}",
        advisory_id=advisory.id,
    )
    return message_id


def _lift_text(
    advisory: Advisory,
    scheduled: datetime | None,
    now: datetime,
    reason: str | None,
    public: Iterable[str],
) -> str:
    lines = [f"The embargo of advisory {advisories.titled(advisory)} is over.", ""]
    lines.append(f"  Lifted at: {format_when(now)}")
    if scheduled is not None and scheduled > now + timedelta(minutes=1):
        lines.append(f"  Scheduled: {format_when(scheduled)} (lifted early)")
    if reason:
        lines.append(f"  Reason: {reason}")
    public = [*public]
    if public:
        lines.append(f"  The public text was sent to: {', '.join(public)}")
    lines += ["", "The embargo conditions no longer apply to this advisory."]
    return "\n".join(lines) + "\n"


def public_subject(advisory: Advisory) -> str:
    """'[Security Advisory] CVE-2026-1234: title', as the Kubernetes SRC writes it."""
    title = advisory.title
    if title.upper().startswith("[EMBARGOED]"):
        title = title[len("[EMBARGOED]") :].strip()
    if advisory.id.upper() not in title.upper():
        title = f"{advisory.id}: {title}" if title else advisory.id
    return f"[Security Advisory] {title}"


# Helpers


def _when(value: datetime | None) -> str:
    return "not set" if value is None else format_when(value)


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()

"""The embargo at work: the lift, the notices around it, and what each copy says.

Everything here happens exactly once however often, or however concurrently,
it is called, because the database decides: the lift is a conditional UPDATE
(`state = 'embargoed'`, one row or none) in the same transaction as every
notice it queues, and each reminder is a row with a unique key committed with
its notice. Callers (the scheduler, the CLI) may therefore simply call again.

Notices to members and senders go through the queue like posts: one Delivery
per recipient, encrypted to that recipient, held if it has no usable key. The
only plaintext is an advisory's public text to the public addresses, queued by
the lift itself. Times are shown in UTC with the zone named.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import TypeVar

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from relay.app import advisories
from relay.core.config import Settings
from relay.core.database import (
    Database,
    rowcount,
)
from relay.core.logs import event
from relay.core.spool import Spool
from relay.core.times import countdown, format_duration, format_when
from relay.model import Advisory, AdvisoryReminder, AdvisoryState
from relay.policy.timing import TimingPolicy
from relay.store import audit, delivery_queue, key_owners, notices

log = logging.getLogger("relay.embargo")

MISSING_LIFT = "missing-lift"

T = TypeVar("T")
_Due = tuple[str, datetime, timedelta]  # reminder kind, when it falls due, its offset


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
        f"The lift time of advisory {_named(advisory)} has been {verb}.",
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
    lines = [f"The embargo of advisory {_named(advisory)} is over.", ""]
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


# What each copy of a post carries


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


def public_subject(advisory: Advisory) -> str:
    """'[Security Advisory] CVE-2026-1234: title', as the Kubernetes SRC writes it."""
    title = advisory.title
    if title.upper().startswith("[EMBARGOED]"):
        title = title[len("[EMBARGOED]") :].strip()
    if advisory.id.upper() not in title.upper():
        title = f"{advisory.id}: {title}" if title else advisory.id
    return f"[Security Advisory] {title}"


# Reminders to the SRC senders and the security contact


def send_due_reminders(
    db: Database,
    spool: Spool,
    settings: Settings,
    now: datetime,
    policy: TimingPolicy | None = None,
) -> list[str]:
    """Queue every reminder and missing-lift warning that is due and not yet sent.

    Reminders fall `[embargo] reminders` before each lift. If several are due at
    once (the relay was down, or the lift moved closer), only the nearest one is
    sent and the others are recorded as done. Returns '<ID>:<kind>' per notice.
    """
    policy = policy or advisories.policy_for(settings)
    with db.transaction() as session:
        candidates = [
            *session.execute(
                select(Advisory).where(Advisory.state == AdvisoryState.EMBARGOED)
            ).scalars()
        ]
        recipients = key_owners.sender_addresses(session, settings.list.security_contact)
    sent = []
    for advisory in candidates:
        if advisory.lift_at is None:
            due = _missing_lift_due(advisory, settings, now)
        else:
            due = _reminders_due(advisory, settings, now)
        if not due:
            continue

        def send(
            session: Session, spool: Spool, advisory: Advisory = advisory, due: list[_Due] = due
        ) -> str | None:
            return _remind(session, spool, settings, policy, advisory, due, recipients, now)

        try:
            kind = in_transaction(db, spool, send)
        except IntegrityError:  # recorded meanwhile by another caller: that one sent it
            continue
        if kind is not None:
            sent.append(f"{advisory.id}:{kind}")
            event(log, "reminded", advisory=advisory.id, kind=kind)
    return sent


def _reminders_due(advisory: Advisory, settings: Settings, now: datetime) -> list[_Due]:
    """(kind, due_at, offset) of each reminder whose time has come, nearest to the lift last."""
    assert advisory.lift_at is not None
    if now >= advisory.lift_at:
        return []
    return [
        (f"remind-{label(offset)}", advisory.lift_at - offset, offset)
        for offset in settings.embargo.reminders  # longest first
        if advisory.lift_at - offset <= now
    ]


def _missing_lift_due(advisory: Advisory, settings: Settings, now: datetime) -> list[_Due]:
    after = settings.embargo.missing_lift_warning_after
    due_at = advisory.created_at + after
    return [(MISSING_LIFT, due_at, after)] if due_at <= now else []


def _remind(
    session: Session,
    spool: Spool,
    settings: Settings,
    policy: TimingPolicy,
    advisory: Advisory,
    due: list[_Due],
    recipients: list[str],
    now: datetime,
) -> str | None:
    done = {
        (kind, due_at)
        for kind, due_at in session.execute(
            select(AdvisoryReminder.kind, AdvisoryReminder.due_at).where(
                AdvisoryReminder.advisory_id == advisory.id
            )
        ).all()
    }
    pending = [d for d in due if (d[0], d[1]) not in done]
    if not pending:
        return None
    nearest = due[-1]
    message_id = None
    if nearest in pending:
        kind = nearest[0]
        if kind == MISSING_LIFT:
            title, text = _missing_lift_text(advisory, settings, nearest[2])
        else:
            title, text = _reminder_text(advisory, settings, policy, nearest[2], pending, now)
        message_id = notices.enqueue_advisory_notice(
            session,
            spool,
            recipients=recipients,
            subject=f"[{settings.list.name}] {title}",
            text=text,
            list_domain=settings.list.domain,
            reason=f"{kind} for {advisory.id}",
            advisory_id=advisory.id,
        )
    for kind, due_at, _ in pending:
        session.add(
            AdvisoryReminder(
                advisory_id=advisory.id,
                kind=kind,
                due_at=due_at,
                sent_at=now,
                message_id=message_id if (kind, due_at) == nearest[:2] else None,
            )
        )
    session.flush()  # a duplicate fails here, before the caller commits anything
    return nearest[0] if message_id else None


def _reminder_text(
    advisory: Advisory,
    settings: Settings,
    policy: TimingPolicy,
    offset: timedelta,
    pending: list[_Due],
    now: datetime,
) -> tuple[str, str]:
    assert advisory.lift_at is not None
    lines = [
        f"Reminder: the embargo of advisory {_named(advisory)} lifts "
        f"{countdown(advisory.lift_at, now)}, at {format_when(advisory.lift_at)}.",
        "",
    ]
    deadline = policy.second_notice_deadline(advisory.lift_at)
    if deadline is not None and _announces_second_notice(settings, policy, pending):
        verb = "was due" if deadline <= now else "is due"
        lines.append(
            f"The list's second notice with the final public text {verb} by "
            f"{format_when(deadline)}."
        )
        if advisory.public_release and advisory.public_text:
            targets = ", ".join(settings.embargo.public_addresses) or "no public address"
            lines.append(
                f"Public text: attached ({len(advisory.public_text)} characters); "
                f"it goes to {targets} at the lift."
            )
        else:
            lines.append(
                "Public text: NOT attached yet. Set it with: "
                f"relay advisory public-text {advisory.id} FILE"
            )
        lines.append("")
    lines.append(
        f"To move the lift: relay advisory schedule {advisory.id} --lift WHEN --reason TEXT"
    )
    return f"Reminder: {advisory.id} lifts in {label(offset)}", "\n".join(lines) + "\n"


def _announces_second_notice(settings: Settings, policy: TimingPolicy, pending: list[_Due]) -> bool:
    """Whether this batch stands for the last reminder before the second-notice deadline."""
    rule = policy.rules.second_notice
    if rule is None:
        return False
    before = [offset for offset in settings.embargo.reminders if offset > rule.before]
    return bool(before) and min(before) in {offset for _, _, offset in pending}


def _missing_lift_text(advisory: Advisory, settings: Settings, after: timedelta) -> tuple[str, str]:
    lines = [
        f"Advisory {_named(advisory)} has been under embargo since "
        f"{format_when(advisory.created_at)} and still has no lift time "
        f"(after {format_duration(after)}).",
        "",
        f"Agree on one and set it: relay advisory schedule {advisory.id} --lift WHEN",
        f"or send a signed post with the lines 'X-Advisory: {advisory.id}' and",
        "'X-Embargo-Until: WHEN' at the top.",
    ]
    return f"{advisory.id} has no lift time yet", "\n".join(lines) + "\n"


# Helpers


def label(offset: timedelta) -> str:
    """'48h', '90m', '30s': a reminder offset as written in the config."""
    seconds = int(offset.total_seconds())
    for unit, size in (("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


class _TrackingSpool(Spool):
    """A view of the spool that remembers what it wrote, to undo it on a rollback."""

    def __init__(self, spool: Spool) -> None:
        super().__init__(spool.root)
        self.written: list[str] = []

    def write(self, message_id: str, name: str, data: bytes) -> Path:
        self.written.append(message_id)
        return super().write(message_id, name, data)


def in_transaction(db: Database, spool: Spool, work: Callable[[Session, Spool], T]) -> T:
    """Run `work` in one transaction; spool files of a rolled-back try are removed.

    For every change that queues notices (spool files) in the same transaction."""
    tracking = _TrackingSpool(spool)
    try:
        with db.transaction() as session:
            return work(session, tracking)
    except BaseException:
        for message_id in dict.fromkeys(tracking.written):
            spool.remove(message_id)
        raise


def _named(advisory: Advisory) -> str:
    return f"{advisory.id} ({advisory.title})" if advisory.title else advisory.id


def _when(value: datetime | None) -> str:
    return "not set" if value is None else format_when(value)


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()

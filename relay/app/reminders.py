"""Reminders to the SRC senders and the security contact before each lift, and the warning
about an advisory that still has no lift time.

Each reminder is a row with a unique key (advisory, kind, due time) committed with its
notice, so it is sent exactly once however often, or however concurrently, the check runs:
a second caller's insert fails and it sends nothing. Reminders fall `[embargo] reminders`
before each lift; when several are due at once only the nearest one is sent.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from relay.app import advisories
from relay.app.transactions import in_transaction
from relay.core.config import Settings
from relay.core.database import Database
from relay.core.logs import event
from relay.core.times import countdown, format_duration, format_when
from relay.model import Advisory, AdvisoryReminder, AdvisoryState
from relay.policy.timing import TimingPolicy
from relay.store import key_owners, notices
from relay.store.spool import Spool

log = logging.getLogger("relay.embargo")  # embargo work, logged as the lift is

MISSING_LIFT = "missing-lift"

_Due = tuple[str, datetime, timedelta]  # reminder kind, when it falls due, its offset


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
        f"Reminder: the embargo of advisory {advisories.titled(advisory)} lifts "
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
        f"Advisory {advisories.titled(advisory)} has been under embargo since "
        f"{format_when(advisory.created_at)} and still has no lift time "
        f"(after {format_duration(after)}).",
        "",
        f"Agree on one and set it: relay advisory schedule {advisory.id} --lift WHEN",
        f"or send a signed post with the lines 'X-Advisory: {advisory.id}' and",
        "'X-Embargo-Until: WHEN' at the top.",
    ]
    return f"{advisory.id} has no lift time yet", "\n".join(lines) + "\n"


def label(offset: timedelta) -> str:
    """'48h', '90m', '30s': a reminder offset as written in the config."""
    seconds = int(offset.total_seconds())
    for unit, size in (("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"

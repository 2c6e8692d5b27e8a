"""Advisories: create, schedule, move, lift, cancel, and the advisory of each post.

Plain functions over a caller's Session, so an admin command, a signed post and
the scheduler share the same rules and each change commits with its audit row
(actor, old and new value, reason; subject "advisory:<ID>"). A schedule is
checked against the list's timing policy: hard violations refuse it, soft ones
come back as warnings for the caller to show.

This module changes rows only. Telling members about a new lift time
(`relay.app.embargo.notify_schedule_change`), moving the scheduler's jobs, and the
lift itself (`relay.app.embargo.lift`) are the caller's next steps.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from relay.core.config import Settings
from relay.core.database import rowcount
from relay.core.errors import RelayError
from relay.core.times import ACCEPTED_FORMS, WhenError, format_when, parse_when
from relay.model import (
    Advisory,
    AdvisoryState,
    AuditEvent,
    PendingChange,
    PendingChangeState,
)
from relay.policy.timing import NO_RULES, TimingPolicy, Violation, load_policy
from relay.store import audit

_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_CVE = re.compile(r"^cve-\d{4}-\d{4,}$", re.IGNORECASE)
ASSIGNED_PREFIX = "ADV"
_NUMBERING_LOCK = 0x41445649  # a PostgreSQL advisory lock's key ("ADVI")


class AdvisoryError(RelayError):
    """An advisory change that cannot be made; the message says why."""


class UnknownAdvisory(AdvisoryError):
    pass


class AdvisoryClosed(AdvisoryError):
    """The advisory was lifted or cancelled: it no longer changes."""


class ScheduleRefused(AdvisoryError):
    """The lift time breaks a hard rule of the list's policy (or lies in the past)."""

    def __init__(self, message: str, violations: tuple[Violation, ...] = ()) -> None:
        super().__init__(message)
        self.violations = violations


class EmbargoTimeUnreadable(AdvisoryError):
    """A post's embargo time (its `keyword` line) is not one definite instant (550 5.6.0)."""

    smtp_status = "5.6.0"

    def __init__(self, keyword: str, text: str, problem: str) -> None:
        forms = "" if ACCEPTED_FORMS in problem else f"\n{ACCEPTED_FORMS}"
        super().__init__(f"{keyword}: {problem}{forms}")
        self.text = text
        self.accepted_forms = ACCEPTED_FORMS


@dataclass(frozen=True)
class Change:
    """What a call did: the advisory, its lift time before and after, policy warnings."""

    advisory: Advisory
    old: datetime | None
    new: datetime | None
    created: bool = False
    warnings: tuple[Violation, ...] = field(default=())
    pending: PendingChange | None = None  # an earlier lift that waits for confirmation

    @property
    def moved(self) -> bool:
        """The lift time changed: members get a notice and the scheduler moves its jobs."""
        return self.old != self.new


def policy_for(settings: Settings) -> TimingPolicy:
    """The timing policy named by `[embargo] policy`, or no rules."""
    path = settings.embargo.policy
    return NO_RULES if path is None else load_policy(path)


def subject(advisory_id: str) -> str:
    """The audit subject of an advisory."""
    return f"advisory:{advisory_id}"


def titled(advisory: Advisory) -> str:
    """'ID (title)', or the ID alone: how the relay's notices name an advisory."""
    title = plain_title(advisory.title, advisory.id)
    return f"{advisory.id} ({title})" if title else advisory.id


# A reply or forward prefix, a bracketed list tag ("[EMBARGOED]", "[SECURITY]", the list's
# own name), or what separates them from the rest.
_PREFIX = re.compile(r"^(?:(?:re|fwd?|aw|wg|sv)\s*:|\[[^\[\]]*\])\s*", re.IGNORECASE)
_SEPARATORS = " \t:;,-\u2013\u2014"


def plain_title(title: str | None, advisory_id: str | None) -> str:
    """The title without what a Subject adds around it: leading "Re:"/"Fwd:" prefixes and
    bracketed list tags, and the advisory's own ID (in front, or at the end in brackets or
    after a dash), since every listing shows the ID beside the title. "" if nothing else is
    left.

    "[EMBARGOED] CVE-2026-0001: Kubelet escape" -> "Kubelet escape". A tag in the middle
    ("Escape in [kubelet]") is the title's own and stays."""
    text = " ".join((title or "").split())
    wanted = re.escape(advisory_id.strip()) if advisory_id and advisory_id.strip() else None
    own_id = re.compile(rf"^{wanted}(?![\w.-])", re.IGNORECASE) if wanted else None
    trailing = (
        re.compile(rf"\s*(?:\({wanted}\)|\[{wanted}\]|[-:\u2013\u2014]\s*{wanted})$", re.I)
        if wanted
        else None
    )
    while found := _PREFIX.match(text) or (own_id.match(text) if own_id else None):
        text = text[found.end() :].lstrip(_SEPARATORS)
    if trailing is not None and (found := trailing.search(text)):
        text = text[: found.start()].rstrip(_SEPARATORS)
    return text


# Reading


def find(session: Session, advisory_id: str) -> Advisory | None:
    """IDs compare case-insensitively; the stored spelling is the creator's."""
    return session.execute(
        select(Advisory).where(func.upper(Advisory.id) == advisory_id.strip().upper())
    ).scalar_one_or_none()


def get(session: Session, advisory_id: str) -> Advisory:
    advisory = find(session, advisory_id)
    if advisory is None:
        raise UnknownAdvisory(f"no advisory {advisory_id!r}")
    return advisory


def list_advisories(session: Session, state: AdvisoryState | None = None) -> list[Advisory]:
    """Advisories by lift time (unset last), then ID."""
    query = select(Advisory).order_by(Advisory.lift_at.is_(None), Advisory.lift_at, Advisory.id)
    if state is not None:
        query = query.where(Advisory.state == state)
    return [*session.execute(query).scalars()]


def history(session: Session, advisory_id: str) -> list[AuditEvent]:
    return [
        *session.execute(
            select(AuditEvent)
            .where(AuditEvent.subject == subject(advisory_id))
            .order_by(AuditEvent.at, AuditEvent.id)
        ).scalars()
    ]


# Changing


def create(
    session: Session,
    advisory_id: str | None,
    title: str,
    lift_at: datetime | None,
    actor: str,
    policy: TimingPolicy,
    now: datetime,
) -> Change:
    """A new embargoed advisory; without an ID the relay assigns ADV-<year>-<seq>."""
    if advisory_id is None:
        advisory_id = _next_id(session, now)
    else:
        advisory_id = _valid_id(advisory_id)
        if (existing := find(session, advisory_id)) is not None:
            raise AdvisoryError(f"advisory {existing.id} exists already")
    if lift_at is None:
        warnings = _checked(policy.check_missing_lift_time(), advisory_id, None)
    else:
        _not_past(lift_at, now)
        warnings = _checked(policy.check(lift_at, announced_at=now, now=now), advisory_id, lift_at)
    advisory = Advisory(
        id=advisory_id,
        # A title taken from a post's Subject carries its tags and the ID: those go.
        title=plain_title(title, advisory_id) or advisory_id,
        state=AdvisoryState.EMBARGOED,
        lift_at=lift_at,
        created_by=actor,
        created_at=now,
        updated_at=now,
        public_release=False,
    )
    session.add(advisory)
    audit.record(
        session,
        actor,
        "advisory.created",
        subject(advisory_id),
        old=None,
        new=_iso(lift_at),
        title=advisory.title,
        warnings=[str(w) for w in warnings] or None,
    )
    session.flush()
    return Change(advisory, None, lift_at, created=True, warnings=warnings)


def schedule(
    session: Session,
    advisory_id: str,
    lift_at: datetime,
    actor: str,
    reason: str | None,
    policy: TimingPolicy,
    now: datetime,
) -> Change:
    """Set or move the lift time; refused for the past and for a lifted or cancelled advisory."""
    advisory = _open(get(session, advisory_id))
    old = advisory.lift_at
    if old == lift_at:
        return Change(advisory, old, old)
    warnings = check_schedule(advisory, lift_at, policy, now)
    advisory.lift_at = lift_at
    advisory.updated_at = now
    supersede_pending(session, advisory.id, actor, now)
    audit.record(
        session,
        actor,
        "advisory.scheduled" if old is None else "advisory.moved",
        subject(advisory.id),
        old=_iso(old),
        new=_iso(lift_at),
        reason=reason,
        warnings=[str(w) for w in warnings] or None,
    )
    return Change(advisory, old, lift_at, warnings=warnings)


def lift_now(
    session: Session, advisory_id: str, actor: str, reason: str | None, now: datetime
) -> Change:
    """Bring the lift forward to `now` (an early lift, e.g. the embargo broke).

    The lift itself, with its notices, is `relay.app.embargo.lift` in the same
    transaction (or `relay.app.embargo.lift_now`, which does both).
    """
    advisory = _open(get(session, advisory_id))
    old = advisory.lift_at
    advisory.lift_at = now
    advisory.updated_at = now
    audit.record(
        session,
        actor,
        "advisory.lift_requested",
        subject(advisory.id),
        old=_iso(old),
        new=_iso(now),
        reason=reason,
    )
    return Change(advisory, old, now)


def cancel(
    session: Session, advisory_id: str, actor: str, reason: str | None, now: datetime | None = None
) -> Change:
    """Withdraw an embargoed advisory: it will not be lifted (nor released publicly)."""
    advisory = _open(get(session, advisory_id))
    advisory.state = AdvisoryState.CANCELLED
    if now is not None:
        advisory.updated_at = now
        supersede_pending(session, advisory.id, actor, now)
    audit.record(
        session,
        actor,
        "advisory.cancelled",
        subject(advisory.id),
        old=AdvisoryState.EMBARGOED.value,
        new=AdvisoryState.CANCELLED.value,
        lift_at=_iso(advisory.lift_at),
        reason=reason,
    )
    return Change(advisory, advisory.lift_at, advisory.lift_at)


def set_public_text(session: Session, advisory_id: str, text: str, actor: str) -> Advisory:
    """The text sent to the public addresses at the lift; marks the advisory for release."""
    advisory = _open(get(session, advisory_id))
    text = text.replace("\r\n", "\n").strip("\n")
    if not text.strip():
        raise AdvisoryError("the public text is empty")
    old = advisory.public_text
    advisory.public_text = text + "\n"
    advisory.public_release = True
    # The text itself stays out of the audit trail: before the lift it is embargoed.
    audit.record(
        session,
        actor,
        "advisory.public_text",
        subject(advisory.id),
        old=None if old is None else f"{len(old)} characters",
        new=f"{len(advisory.public_text)} characters",
        public_release=True,
    )
    return advisory


def lift_time_of(keyword: str, text: str | None, signed_at: datetime) -> datetime | None:
    """The lift time a signed post's `keyword` line (X-Embargo-Until) asks for, if any.

    A relative time ("+10d", "in 36h") counts from the signature's creation time, never
    from the arrival: a post that waited two days in a sending queue means what its
    author meant when signing, and a replayed one could not mean anything new."""
    if text is None:
        return None
    try:
        return parse_when(text, now=signed_at)
    except WhenError as exc:
        raise EmbargoTimeUnreadable(keyword, text, str(exc)) from None


def check_schedule(
    advisory: Advisory, lift_at: datetime, policy: TimingPolicy, now: datetime
) -> tuple[Violation, ...]:
    """The checks `schedule` makes, without changing anything: for a change that waits."""
    _open(advisory)
    _not_past(lift_at, now)
    found = policy.check(lift_at, announced_at=advisory.created_at, now=now)
    return _checked(found, advisory.id, lift_at)


def check_open(advisory: Advisory) -> Advisory:
    """Refuse a lifted or cancelled advisory: it no longer changes."""
    return _open(advisory)


def supersede_pending(session: Session, advisory_id: str, actor: str, now: datetime) -> int:
    """Changes waiting for confirmation (relay/app/confirmations.py) no longer fit once the
    lift time changed, or the advisory was lifted or cancelled, by another way."""
    result = session.execute(
        update(PendingChange)
        .where(
            PendingChange.advisory_id == advisory_id,
            PendingChange.state == PendingChangeState.PENDING,
        )
        .values(state=PendingChangeState.SUPERSEDED, decided_by=actor, decided_at=now)
        .execution_options(synchronize_session=False)
    )
    return rowcount(result) or 0


# Helpers


def _valid_id(advisory_id: str) -> str:
    advisory_id = advisory_id.strip()
    if not _ID.match(advisory_id):
        raise AdvisoryError(
            f"not a usable advisory ID: {advisory_id!r} (letters, digits, '.', '_' and '-', "
            "at most 64, such as CVE-2026-1234 or K8S-2026-0001)"
        )
    return advisory_id.upper() if _CVE.match(advisory_id) else advisory_id


def _next_id(session: Session, now: datetime) -> str:
    prefix = f"{ASSIGNED_PREFIX}-{now.year}-"
    if session.get_bind().dialect.name == "postgresql":
        # Nodes number posts at the same time: one at a time, each seeing the last one's
        # committed number (the lock is held until this transaction ends).
        session.execute(select(func.pg_advisory_xact_lock(_NUMBERING_LOCK)))
    taken = session.execute(select(Advisory.id).where(Advisory.id.startswith(prefix))).scalars()
    numbers = [int(rest) for ident in taken if (rest := ident[len(prefix) :]).isdigit()]
    return f"{prefix}{max(numbers, default=0) + 1:04d}"


def _open(advisory: Advisory) -> Advisory:
    if advisory.state == AdvisoryState.LIFTED:
        when = f" at {format_when(advisory.lifted_at)}" if advisory.lifted_at else ""
        raise AdvisoryClosed(
            f"advisory {advisory.id} is already lifted{when}; it can no longer change"
        )
    if advisory.state == AdvisoryState.CANCELLED:
        raise AdvisoryClosed(f"advisory {advisory.id} was cancelled; it can no longer change")
    return advisory


def _not_past(lift_at: datetime, now: datetime) -> None:
    if lift_at.tzinfo is None:
        raise ValueError("lift times must be timezone-aware")
    if lift_at <= now:
        raise ScheduleRefused(
            f"the lift time {format_when(lift_at)} is not in the future "
            f"(now: {format_when(now)}); to lift at once, use lift instead"
        )


def _checked(
    violations: list[Violation], advisory_id: str, lift_at: datetime | None
) -> tuple[Violation, ...]:
    """Raise for hard violations; return the soft ones as warnings."""
    hard = [v for v in violations if v.hard]
    if hard:
        what = "no lift time" if lift_at is None else f"lift {format_when(lift_at)}"
        lines = "\n".join(f"  {v}" for v in hard)
        raise ScheduleRefused(
            f"{what} for {advisory_id} breaks the list's rules:\n{lines}", tuple(violations)
        )
    return tuple(violations)


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()

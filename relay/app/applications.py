"""Applications to join the list: submitting one (read by relay/app/application_form.py),
vouches, rejection, and reading them; approval, which adds a member, is relay/app/approval.py.

An active member vouches from the CLI or with a signed post (`X-Vouch: <id>`): both call
`vouch` in their own transaction. Every change is audited under `application:<id>`.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from relay.app import membership
from relay.app.application_form import assess, parse_application
from relay.core import addresses
from relay.core.database import Database
from relay.core.errors import RelayError
from relay.core.logs import event
from relay.model import (
    Application,
    ApplicationState,
    AuditEvent,
    MemberState,
    utcnow,
)
from relay.store import audit

log = logging.getLogger("relay.applications")


class ApplicationError(RelayError):
    """A refused application change; the message says why (and is safe to mail back)."""


_APPLICATION_ID = re.compile(r"^\s*#?\s*(\d{1,9})\s*$")


def parse_application_id(value: int | str) -> int:
    """An application id as given on the command line or in `X-Vouch:` ("7" or "#7")."""
    if isinstance(value, int):
        return value
    if found := _APPLICATION_ID.match(value):
        return int(found.group(1))
    raise ApplicationError(f"not an application id: {value!r}")


# Views


@dataclass(frozen=True)
class VouchView:
    member: str
    at: str  # ISO 8601, UTC
    actor: str


@dataclass(frozen=True)
class ApplicationView:
    id: int
    distribution: str
    alias: str | None
    state: str
    answered: list[str]
    missing: list[str]
    vouches: list[VouchView]
    submitted_at: datetime
    submitted_by: str
    decided_at: datetime | None
    decided_by: str | None
    reason: str | None
    answers: dict[str, str]


@dataclass(frozen=True)
class ApplicationDetail:
    application: ApplicationView
    history: list[audit.AuditView]


@dataclass(frozen=True)
class VouchResult:
    application_id: int
    member: str
    vouches: int  # vouches recorded now
    changed: bool  # False when the member had already vouched


def view_of(a: Application) -> ApplicationView:
    answers = dict(a.answers or {})
    answered, missing = assess(answers)
    return ApplicationView(
        id=a.id,
        distribution=a.distribution,
        alias=a.alias,
        state=a.state,
        answered=answered,
        missing=missing,
        vouches=[VouchView(v["member"], v["at"], v["actor"]) for v in a.vouches or []],
        submitted_at=a.submitted_at,
        submitted_by=a.submitted_by,
        decided_at=a.decided_at,
        decided_by=a.decided_by,
        reason=a.reason,
        answers=answers,
    )


def subject(application_id: int) -> str:
    """The audit subject of an application."""
    return f"application:{application_id}"


def load(session: Session, application_id: int | str, *, lock: bool = False) -> Application:
    number = parse_application_id(application_id)
    query = select(Application).where(Application.id == number)
    if lock:
        query = query.with_for_update()  # PostgreSQL; SQLite serialises writers anyway
    application = session.execute(query).scalar_one_or_none()
    if application is None:
        raise ApplicationError(f"no application {number}")
    return application


def require_open(application: Application) -> Application:
    if application.state != ApplicationState.SUBMITTED:
        raise ApplicationError(f"application {application.id} is already {application.state}")
    return application


# Use-cases


def submit(db: Database, text: str, actor: str, source: str | None = None) -> ApplicationView:
    """Record an application as read by `parse_application`, audited; criteria may be missing
    (it cannot be approved until they are answered) but the distribution must be named."""
    parsed = parse_application(text)
    if parsed.distribution is None:
        raise ApplicationError(
            "the application has no heading naming the distribution "
            "('# Distributors Application for NAME')"
        )
    if not parsed.answers:
        raise ApplicationError(
            "no prompt of the application template found (the security alias and criteria 1-8)"
        )
    with db.transaction() as session:
        if parsed.alias is not None:
            member = membership.find(session, parsed.alias)
            if member is not None and member.state != MemberState.REMOVED:
                raise ApplicationError(f"{parsed.alias} is already a member ({member.state})")
            pending = session.execute(
                select(Application.id).where(
                    Application.alias == parsed.alias,
                    Application.state == ApplicationState.SUBMITTED,
                )
            ).scalar()
            if pending is not None:
                raise ApplicationError(
                    f"application {pending} for {parsed.alias} is still open; approve or "
                    "reject it first"
                )
        application = Application(
            distribution=parsed.distribution,
            alias=parsed.alias,
            answers=parsed.answers,
            state=ApplicationState.SUBMITTED,
            submitted_at=utcnow(),
            submitted_by=actor,
            vouches=[],
        )
        session.add(application)
        session.flush()
        audit.record(
            session,
            actor,
            "application.submitted",
            subject(application.id),
            new=ApplicationState.SUBMITTED.value,
            distribution=parsed.distribution,
            alias=parsed.alias,
            missing=parsed.missing,
            source=source,
        )
        view = view_of(application)
    event(log, "application.submitted", id=view.id, missing=len(view.missing))
    return view


def vouch(
    session: Session, application_id: int | str, member_address: str, actor: str
) -> VouchResult:
    """Record in the caller's transaction that an active member vouches for an application.

    Called by the CLI and by a member's signed post with `X-Vouch: <id>`. Refuses unknown,
    suspended and removed members; a second vouch by the same member changes nothing."""
    application = require_open(load(session, application_id, lock=True))
    address = addresses.normalise_address(member_address)
    member = membership.find(session, address)
    if member is None:
        raise ApplicationError(f"{address} is not a member; only active members may vouch")
    if member.state != MemberState.ACTIVE:
        raise ApplicationError(f"{address} is {member.state}; only active members may vouch")
    vouches = list(application.vouches or [])
    if any(v["member"] == address for v in vouches):
        return VouchResult(application.id, address, len(vouches), changed=False)
    vouches.append({"member": address, "at": utcnow().isoformat(), "actor": actor})
    application.vouches = vouches  # a new list, so the JSON column is written
    audit.record(
        session,
        actor,
        "application.vouched",
        subject(application.id),
        old=len(vouches) - 1,
        new=len(vouches),
        member=address,
    )
    event(log, "application.vouched", id=application.id, member=address)
    return VouchResult(application.id, address, len(vouches), changed=True)


def vouch_application(
    db: Database, application_id: int | str, member_address: str, actor: str
) -> VouchResult:
    with db.transaction() as session:
        return vouch(session, application_id, member_address, actor)


def reject(db: Database, application_id: int | str, actor: str, reason: str) -> ApplicationView:
    """Close an application without a member, audited with the reason."""
    reason = " ".join(reason.split())
    if not reason:
        raise ApplicationError("give a reason (it is kept in the audit trail)")
    with db.transaction() as session:
        application = require_open(load(session, application_id, lock=True))
        application.state = ApplicationState.REJECTED
        application.decided_at, application.decided_by = utcnow(), actor
        application.reason = reason
        audit.record(
            session,
            actor,
            "application.rejected",
            subject(application.id),
            old=ApplicationState.SUBMITTED.value,
            new=ApplicationState.REJECTED.value,
            reason=reason,
        )
        view = view_of(application)
    event(log, "application.rejected", id=view.id)
    return view


def list_applications(db: Database) -> list[ApplicationView]:
    """Every application, newest first."""
    with db.transaction() as session:
        rows = session.execute(select(Application).order_by(Application.id.desc())).scalars()
        return [view_of(a) for a in rows]


def application_detail(db: Database, application_id: int | str) -> ApplicationDetail:
    """One application with its answers, vouches and history."""
    with db.transaction() as session:
        application = load(session, application_id)
        rows = session.execute(
            select(AuditEvent)
            .where(AuditEvent.subject == subject(application.id))
            .order_by(AuditEvent.at, AuditEvent.id)
        ).scalars()
        return ApplicationDetail(view_of(application), [audit.audit_view(e) for e in rows])

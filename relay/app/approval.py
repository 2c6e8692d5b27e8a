"""Approving an application: the member it asks for, created with what it implies, and the
decision, in one transaction.

`approve` refuses until every criterion is answered and an active member has vouched. It
then adds the member (membership's ADD move) with its keys, vetted and imported first so
a bad key changes nothing, or without one: the member is then unreachable (its copies are
held, never sent in plaintext) until a key is imported, and the security contact is told.
On request the member is also queued the backlog of the advisories still under embargo
(relay/store/recipients.py). A failure anywhere on the way leaves neither the member nor
the approval.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from relay.app import advisories, applications, members, membership
from relay.app.application_form import CRITERIA, assess, describe
from relay.app.applications import ApplicationError, ApplicationView
from relay.app.members import MemberView
from relay.app.membership import Move
from relay.app.transactions import in_transaction
from relay.core.config import Settings
from relay.core.crypto import Crypto
from relay.core.database import Database
from relay.core.logs import event
from relay.model import (
    Advisory,
    AdvisoryState,
    Application,
    ApplicationState,
    Member,
    MemberState,
    utcnow,
)
from relay.store import audit, recipients
from relay.store.spool import Spool

log = logging.getLogger("relay.approval")


@dataclass(frozen=True)
class SentEmbargoed:
    """Posts of an advisory still under embargo queued for a new member."""

    advisory_id: str
    message_ids: list[str]


@dataclass(frozen=True)
class Approval:
    application: ApplicationView
    member: MemberView
    sent: list[SentEmbargoed]
    notice: str | None  # the security contact's notice when the member has no usable key


def _refusals(session: Session, application: Application) -> list[str]:
    """Why the application cannot be approved yet; empty when it can."""
    problems = []
    _, missing = assess(application.answers or {})
    if missing:
        problems.append(f"criteria not answered: {describe(missing)}")
    vouchers = [v["member"] for v in application.vouches or []]
    active = (
        session.execute(
            select(Member.address).where(
                Member.address.in_(vouchers), Member.state == MemberState.ACTIVE
            )
        )
        .scalars()
        .all()
    )
    if not active:
        since = f" ({', '.join(vouchers)} no longer active)" if vouchers else ""
        problems.append(
            f"no vouch from an active member{since}; record one with "
            f"'relay application vouch {application.id} --by MEMBER'"
        )
    return problems


def approve(
    db: Database,
    crypto: Crypto,
    settings: Settings,
    spool: Spool,
    application_id: int | str,
    actor: str,
    *,
    key_data: bytes | None = None,
    send_active: bool = False,
) -> Approval:
    """Create the member an application asks for, once it may be approved.

    With `key_data` the keys are vetted and imported first (a bad key changes nothing);
    without, the member is added with no key and is unreachable until `relay key import`,
    and the security contact is told. With `send_active` it is also queued every post of
    the advisories still under embargo. The member, its keys, the notice, the posts and
    the decision are one transaction: a failure on the way leaves none of them."""
    with db.transaction() as session:
        application = applications.require_open(applications.load(session, application_id))
        if problems := _refusals(session, application):
            raise ApplicationError(
                f"application {application.id} cannot be approved: " + "; ".join(problems)
            )
        alias, name = application.alias, application.distribution
        if alias is None:  # cannot happen with criterion 0 answered; refuse rather than guess
            raise ApplicationError(f"application {application.id} names no security alias")
        membership.check_move(session, alias, Move.ADD)
    fingerprints = None
    if key_data is not None:
        fingerprints = members.import_new_member_keys(db, crypto, alias, key_data)

    def work(session: Session, spool: Spool) -> Approval:
        application = applications.require_open(
            applications.load(session, application_id, lock=True)
        )
        why = f"application {application.id}"
        member = members.admit(session, crypto, alias, name, fingerprints, actor, source=why)
        member.criteria = {n: application.answers[n] for n in CRITERIA}
        member.vouched_by = application.vouches[0]["member"]
        if not member.domains:
            member.domains = [alias.rpartition("@")[2]]
        session.flush()
        view = members.member_view(crypto, member)
        notice = None
        if not view.usable:
            notice = members.tell_contact_keyless(
                session, spool, settings, [alias], f"approval of {why}"
            )
        sent = queue_embargoed(session, member, settings.list.domain, actor) if send_active else []
        application.state = ApplicationState.APPROVED
        application.decided_at, application.decided_by = utcnow(), actor
        audit.record(
            session,
            actor,
            "application.approved",
            applications.subject(application.id),
            old=ApplicationState.SUBMITTED.value,
            new=ApplicationState.APPROVED.value,
            member=alias,
            keys=view.fingerprints,
            vouched_by=[v["member"] for v in application.vouches],
            sent_embargoed={s.advisory_id: len(s.message_ids) for s in sent},
        )
        return Approval(applications.view_of(application), view, sent, notice)

    done = in_transaction(db, spool, work)
    event(
        log,
        "application.approved",
        id=done.application.id,
        member=alias,
        usable=done.member.usable,
        sent=sum(len(s.message_ids) for s in done.sent),
    )
    return done


def queue_embargoed(
    session: Session, member: Member, list_domain: str, actor: str
) -> list[SentEmbargoed]:
    """Queue for a new member its backlog (relay/store/recipients.py) of the advisories
    still under embargo, in the caller's transaction, audited under each advisory."""
    embargoed = session.execute(
        select(Advisory.id).where(Advisory.state == AdvisoryState.EMBARGOED)
    ).scalars()
    queued = recipients.queue_backlog(
        session, list(embargoed), member.address, list_domain, utcnow(), member_id=member.id
    )
    for advisory_id, message_ids in queued.items():
        audit.record(
            session,
            actor,
            "advisory.sent_to_new_member",
            advisories.subject(advisory_id),
            member=member.address,
            messages=message_ids,
        )
    return [SentEmbargoed(a, m) for a, m in queued.items()]

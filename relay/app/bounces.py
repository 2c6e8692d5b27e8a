"""What a bounce at a copy's VERP address does: the decision, then its one transaction.

The edge (relay/inbound/edge.py) reads the bounce (relay/inbound/bounces.py) into
`Failure`s, the recipients it reports with their status. `decide` is the pure part: a
bounce counts only if it names the recipient of the delivery its address names; it is hard
if that recipient failed for good (an RFC 3464 `Action: failed`, or a non-standard bounce
that reports a failure), soft if its delivery was only delayed. `apply` records it in one
transaction:

- soft: an audit row (`delivery.delayed`), nothing else;
- hard: the delivery ends `failed` (`bounced`, with the reported status and diagnostic),
  one `bounces` row per delivery (the same bounce again counts once) and `delivery.bounced`
  in the audit; once a member has `[members] bounce_limit` hard bounces within
  `bounce_window`, it becomes bouncing (relay/app/membership.py: it still receives every
  copy) and the security contact gets one notice, encrypted to its key.

A bounce is never distributed and never stored: only its verdict is.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from relay.app import membership
from relay.app.membership import Move
from relay.core.config import Settings
from relay.core.database import Database
from relay.core.errors import RelayError
from relay.core.logs import event
from relay.core.times import format_duration
from relay.model import Delivery, Member, MemberState
from relay.model.messages import Bounce
from relay.store import audit, delivery_queue, notices
from relay.store.spool import Spool

log = logging.getLogger("relay.bounces")

RELAY_ACTOR = delivery_queue.RELAY_ACTOR


@dataclass(frozen=True)
class Failure:
    """One recipient a bounce reports, as read from it."""

    address: str  # lower-case
    permanent: bool  # failed for good; else delayed
    status: str  # RFC 3463, e.g. "5.1.1"
    diagnostic: str  # one clean line, possibly empty


@dataclass(frozen=True)
class BounceVerdict:
    """What a bounce means for the delivery its address names."""

    hard: bool
    status: str
    reason: str


class NotABounce(RelayError):
    """Nothing in the message reports a failure for the delivery's recipient."""


@dataclass(frozen=True)
class Applied:
    delivery_id: int
    verdict: BounceVerdict
    counted: bool  # a hard bounce recorded now (False: soft, or recorded before)
    bouncing: str | None = None  # the member that became bouncing with it
    notice: str | None = None  # the security contact's notice about it


def decide(recipient: str, failures: Sequence[Failure]) -> BounceVerdict | None:
    """The verdict on a bounce for the copy sent to `recipient`; None: it is no bounce of
    that copy (it reports nothing, or other recipients only)."""
    mine = [f for f in failures if f.address == recipient.lower()]
    chosen = next((f for f in mine if f.permanent), None) or next(iter(mine), None)
    if chosen is None:
        return None
    reason = chosen.diagnostic or ("failed" if chosen.permanent else "delayed")
    return BounceVerdict(hard=chosen.permanent, status=chosen.status, reason=reason)


def recipient_for(db: Database, token: str) -> str | None:
    """The recipient of the delivery whose bounce token this is; None: no such delivery."""
    with db.transaction() as session:
        return session.execute(
            select(Delivery.recipient).where(Delivery.bounce_token == token)
        ).scalar_one_or_none()


def apply(
    db: Database,
    spool: Spool,
    settings: Settings,
    token: str,
    failures: Sequence[Failure],
    now: datetime,
) -> Applied:
    """Record the bounce at `token`'s address in one transaction; raises NotABounce."""
    try:
        with db.transaction() as session:
            applied = _apply(session, spool, settings, token, failures, now)
    except IntegrityError:
        # The same bounce, recorded by a concurrent session a moment ago: counted once.
        with db.transaction() as session:
            delivery = _delivery(session, token)
            verdict = decide(delivery.recipient, failures)
            assert verdict is not None
            applied = Applied(delivery.id, verdict, counted=False)
    v = applied.verdict
    event(
        log,
        "bounce",
        delivery=applied.delivery_id,
        hard=v.hard,
        status=v.status,
        counted=applied.counted,
        bouncing=applied.bouncing or "-",
    )
    return applied


def _delivery(session: Session, token: str, *, lock: bool = False) -> Delivery:
    query = select(Delivery).where(Delivery.bounce_token == token)
    delivery = session.execute(query.with_for_update() if lock else query).scalar_one_or_none()
    if delivery is None:
        raise NotABounce("no delivery has this bounce address")
    return delivery


def _apply(
    session: Session,
    spool: Spool,
    settings: Settings,
    token: str,
    failures: Sequence[Failure],
    now: datetime,
) -> Applied:
    delivery = _delivery(session, token, lock=True)
    verdict = decide(delivery.recipient, failures)
    if verdict is None:
        raise NotABounce("not a delivery status notification for this address")
    if not verdict.hard:
        audit.record(
            session,
            RELAY_ACTOR,
            "delivery.delayed",
            str(delivery.id),
            recipient=delivery.recipient,
            code=verdict.status,
            message=delivery.message_id,
        )
        return Applied(delivery.id, verdict, counted=False)
    known = select(Bounce.id).where(Bounce.delivery_id == delivery.id)
    if session.execute(known).first() is not None:
        return Applied(delivery.id, verdict, counted=False)
    delivery_queue.bounced(session, delivery, verdict.status, verdict.reason, now=now)
    session.flush()  # a concurrent record of the same bounce fails here, not at commit
    if delivery.member_id is None:  # a notice to a sender or a public address
        return Applied(delivery.id, verdict, counted=True)
    return _count(session, spool, settings, delivery, verdict, now)


def _count(
    session: Session,
    spool: Spool,
    settings: Settings,
    delivery: Delivery,
    verdict: BounceVerdict,
    now: datetime,
) -> Applied:
    """Count the member's hard bounces within the window; at the limit, mark it bouncing."""
    # Locked, so two bounces at once cannot both see the limit reached and tell twice.
    member = session.execute(
        select(Member).where(Member.id == delivery.member_id).with_for_update()
    ).scalar_one()
    limit, window = settings.members.bounce_limit, settings.members.bounce_window
    recent = session.execute(
        select(func.count())
        .select_from(Bounce)
        .where(Bounce.member_id == member.id, Bounce.at > now - window)
    ).scalar_one()
    if recent < limit or membership.standing(member) != MemberState.ACTIVE:
        return Applied(delivery.id, verdict, counted=True)
    membership.transition(
        session,
        member.address,
        Move.BOUNCE,
        RELAY_ACTOR,
        reason=f"{recent} hard bounces within {format_duration(window)}",
        delivery=delivery.id,
    )
    lst = settings.list
    notice = notices.enqueue_notice(
        session,
        spool,
        recipients=[lst.security_contact],
        subject=f"[{lst.name}] Member bouncing: {member.address}",
        text=_bouncing_text(member.address, recent, settings, delivery, verdict),
        list_domain=lst.domain,
        reason=f"member {member.address} bouncing",
    )
    return Applied(delivery.id, verdict, counted=True, bouncing=member.address, notice=notice)


def _bouncing_text(
    address: str, count: int, settings: Settings, delivery: Delivery, verdict: BounceVerdict
) -> str:
    window = format_duration(settings.members.bounce_window)
    return (
        f"Copies for member {address} bounced {count} times within {window} "
        f"(the limit is {settings.members.bounce_limit}); the member is now bouncing.\n\n"
        f"The last bounce: delivery {delivery.id} (message {delivery.message_id}), "
        f"{verdict.status} {verdict.reason}\n\n"
        "The member still receives every copy. Check its security alias with its team;\n"
        f"once mail reaches it again, run: relay member resume {address} --reason TEXT\n"
    )

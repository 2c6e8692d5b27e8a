"""The durable queue: the only writer of delivery state once a post is in.

States (Postfix names): queued -> active -> sent, or deferred (retried at
`next_attempt_at`), held (waits for its `HoldReason` to pass), failed (permanent error
or queue lifetime exceeded). relay/store/incoming.py adds a post's deliveries; from
then on only this module changes them (relay/store/notices.py only adds new ones).
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import cast

from sqlalchemy import Table, bindparam, func, select, update
from sqlalchemy.orm import Session

from relay.core.database import Database, rowcount
from relay.core.errors import RelayError
from relay.core.spool import Spool
from relay.model import (
    Delivery,
    DeliveryStatus,
    HoldReason,
    MemberState,
    Message,
    MessageKind,
    utcnow,
)
from relay.store import audit

RELAY_ACTOR = "relay"


def new_id() -> str:
    return secrets.token_hex(8)


def copy_message_id(domain: str) -> str:
    """A fresh Message-ID for one copy, fixed at accept time so a resend reuses it."""
    return f"<{secrets.token_hex(12)}@{domain}>"


MODERATION_HOLD = HoldReason.MODERATION
REJECTED = "rejected"  # `last_code` of a post's copies a moderator refused


# Claiming and outcomes


def recover(db: Database) -> int:
    """At start-up: deliveries left active by a crash go back to the queue."""
    with db.transaction() as session:
        result = session.execute(
            update(Delivery)
            .where(Delivery.status == DeliveryStatus.ACTIVE)
            .values(status=DeliveryStatus.QUEUED, lease_until=None)
        )
        return rowcount(result) or 0


def sweep_orphans(db: Database, spool: Spool, older_than: timedelta) -> int:
    """At start-up: remove spool files no message row refers to (a crash came between
    the spool write and the commit, so no one was ever told `250`). Only files older
    than `older_than`: a command running now may be about to commit its own."""
    candidates = spool.stored_before(time.time() - older_than.total_seconds())
    if not candidates:
        return 0
    with db.transaction() as session:
        known = set(session.execute(select(Message.id).where(Message.id.in_(candidates))).scalars())
    orphans = [message_id for message_id in candidates if message_id not in known]
    for message_id in orphans:
        spool.remove(message_id)
    return len(orphans)


def claim_due(db: Database, now: datetime, limit: int, lease_for: timedelta) -> list[int]:
    """Lease up to `limit` due deliveries to this process, oldest first."""
    with db.transaction() as session:
        ids = list(
            session.execute(
                select(Delivery.id)
                .where(
                    (
                        Delivery.status.in_((DeliveryStatus.QUEUED, DeliveryStatus.DEFERRED))
                        & (Delivery.next_attempt_at <= now)
                    )
                    | ((Delivery.status == DeliveryStatus.ACTIVE) & (Delivery.lease_until < now))
                )
                .order_by(Delivery.next_attempt_at, Delivery.id)
                .limit(limit)
            ).scalars()
        )
        if ids:
            session.execute(
                update(Delivery)
                .where(Delivery.id.in_(ids))
                .values(status=DeliveryStatus.ACTIVE, lease_until=now + lease_for)
            )
        return ids


def release(db: Database, delivery_ids: list[int]) -> None:
    """Give back claimed deliveries that were never started (orderly shutdown)."""
    with db.transaction() as session:
        session.execute(
            update(Delivery)
            .where(Delivery.id.in_(delivery_ids), Delivery.status == DeliveryStatus.ACTIVE)
            .values(status=DeliveryStatus.QUEUED, lease_until=None)
        )


@dataclass(frozen=True)
class Attempt:
    """What one delivery attempt came to, as reported by the transport."""

    delivery_id: int
    result: str  # "sent" | "temporary" | "permanent"
    code: str
    reason: str
    fingerprints: tuple[str, ...] = ()


@dataclass(frozen=True)
class Retry:
    """The retry schedule: exponential backoff, given up after the queue lifetime."""

    min_backoff: timedelta
    max_backoff: timedelta
    lifetime: timedelta


def record_outcomes(
    db: Database, outcomes: list[Attempt], *, now: datetime, retry: Retry
) -> tuple[list[int], list[Delivery]]:
    """Record a batch of attempts in one transaction (one fsync for many deliveries).

    Returns the ids recorded as sent and the other deliveries it changed. A
    delivery no longer active (cancelled meanwhile) keeps the administrator's
    decision.
    """
    sent = [o for o in outcomes if o.result == "sent"]
    others = [o for o in outcomes if o.result != "sent"]
    changed: list[Delivery] = []
    sent_ids: list[int] = []
    with db.transaction() as session:
        if sent:
            # The common case, as one executemany instead of loading ORM objects.
            table = cast(Table, Delivery.__table__)
            session.connection().execute(
                update(table)
                .where(table.c.id == bindparam("did"), table.c.status == DeliveryStatus.ACTIVE)
                .values(
                    status=DeliveryStatus.SENT,
                    attempts=table.c.attempts + 1,
                    sent_at=now,
                    lease_until=None,
                    updated_at=now,
                    last_code=bindparam("code"),
                    last_reason=bindparam("reason"),
                    fingerprints=bindparam("fprs"),
                ),
                [
                    {
                        "did": o.delivery_id,
                        "code": o.code,
                        "reason": o.reason,
                        "fprs": list(o.fingerprints) or None,
                    }
                    for o in sent
                ],
            )
            sent_ids = list(
                session.execute(
                    select(Delivery.id).where(
                        Delivery.id.in_([o.delivery_id for o in sent]),
                        Delivery.status == DeliveryStatus.SENT,
                    )
                ).scalars()
            )
        if others:
            rows = session.execute(
                select(Delivery).where(Delivery.id.in_([o.delivery_id for o in others]))
            ).scalars()
            by_id = {d.id: d for d in rows}
            for outcome in others:
                delivery = by_id[outcome.delivery_id]
                if delivery.status != DeliveryStatus.ACTIVE:
                    continue
                if outcome.result == "temporary":
                    defer(session, delivery, outcome.code, outcome.reason, now=now, retry=retry)
                else:
                    fail(session, delivery, outcome.code, outcome.reason)
                changed.append(delivery)
    return sent_ids, changed


def backoff(attempts: int, minimum: timedelta, maximum: timedelta) -> timedelta:
    """Exponential backoff: minimum, 2x, 4x ... clamped to maximum."""
    return min(maximum, minimum * (2 ** max(0, attempts - 1)))


def defer(
    session: Session, delivery: Delivery, code: str, reason: str, *, now: datetime, retry: Retry
) -> None:
    """A temporary failure: retry later, or fail once the queue lifetime is over."""
    delivery.attempts += 1
    delivery.lease_until = None
    delivery.last_code, delivery.last_reason = code, reason
    if now - delivery.created_at >= retry.lifetime:
        delivery.status = DeliveryStatus.FAILED
        delivery.last_reason = f"queue lifetime exceeded; last error: {reason}"
        action = "delivery.failed"
    else:
        delivery.status = DeliveryStatus.DEFERRED
        delivery.next_attempt_at = now + backoff(
            delivery.attempts, retry.min_backoff, retry.max_backoff
        )
        action = "delivery.deferred"
    audit.record(
        session,
        RELAY_ACTOR,
        action,
        str(delivery.id),
        recipient=delivery.recipient,
        code=code,
        attempts=delivery.attempts,
        message=delivery.message_id,
    )


def fail(session: Session, delivery: Delivery, code: str, reason: str) -> None:
    delivery.status = DeliveryStatus.FAILED
    delivery.attempts += 1
    delivery.lease_until = None
    delivery.last_code, delivery.last_reason = code, reason
    audit.record(
        session,
        RELAY_ACTOR,
        "delivery.failed",
        str(delivery.id),
        recipient=delivery.recipient,
        code=code,
        message=delivery.message_id,
    )


def hold(
    session: Session,
    delivery: Delivery,
    reason: str,
    *,
    why: HoldReason,
    code: str = "held",
    **detail: object,
) -> None:
    """Hold a delivery in the caller's transaction; it is never sent in plaintext instead.
    `why` is what releases it; `reason` says it in words."""
    delivery.status = DeliveryStatus.HELD
    delivery.hold_reason = why
    delivery.lease_until = None
    delivery.last_code, delivery.last_reason = code, reason
    audit.record(
        session,
        RELAY_ACTOR,
        "delivery.held",
        str(delivery.id),
        recipient=delivery.recipient,
        reason=reason,
        hold_reason=why.value,
        message=delivery.message_id,
        **detail,
    )


# Administrative changes


def retry(session: Session, delivery_id: int, actor: str) -> Delivery:
    """Put a held, deferred or failed delivery back in the queue for an attempt now."""
    delivery = session.get(Delivery, delivery_id)
    if delivery is None:
        raise RelayError(f"no delivery with id {delivery_id}")
    if delivery.status == DeliveryStatus.SENT:
        raise RelayError(f"delivery {delivery_id} was already sent")
    if delivery.status == DeliveryStatus.ACTIVE:
        raise RelayError(f"delivery {delivery_id} is being attempted right now")
    if delivery.member is not None and delivery.member.state != MemberState.ACTIVE:
        raise RelayError(f"delivery {delivery_id} is for a {delivery.member.state} member")
    old = delivery.status
    delivery.status = DeliveryStatus.QUEUED
    delivery.hold_reason = None
    delivery.next_attempt_at = utcnow()
    audit.record(session, actor, "delivery.retried", str(delivery_id), old=old, new="queued")
    return delivery


_UNSENT = (
    DeliveryStatus.QUEUED,
    DeliveryStatus.DEFERRED,
    DeliveryStatus.HELD,
    DeliveryStatus.ACTIVE,
)


def cancel_member(session: Session, member_id: int, actor: str, reason: str) -> int:
    """Stop every unsent delivery to a member at once (removal or suspension)."""
    deliveries = session.execute(
        select(Delivery).where(
            Delivery.member_id == member_id,
            Delivery.status.in_(_UNSENT),
        )
    ).scalars()
    count = 0
    for delivery in deliveries:
        delivery.status = DeliveryStatus.FAILED
        delivery.lease_until = None
        delivery.last_code, delivery.last_reason = "cancelled", reason
        count += 1
    if count:
        audit.record(
            session, actor, "delivery.cancelled", f"member:{member_id}", count=count, reason=reason
        )
    return count


def cancel_grant(
    session: Session, advisory_id: str, recipient: str, actor: str, reason: str
) -> int:
    """Stop every unsent copy of an advisory's messages to a grant holder at once."""
    deliveries = session.execute(
        select(Delivery).where(
            Delivery.advisory_id == advisory_id,
            Delivery.recipient == recipient,
            Delivery.member_id.is_(None),
            Delivery.status.in_(_UNSENT),
        )
    ).scalars()
    count = 0
    for delivery in deliveries:
        delivery.status = DeliveryStatus.FAILED
        delivery.lease_until = None
        delivery.last_code, delivery.last_reason = "cancelled", reason
        count += 1
    if count:
        audit.record(
            session,
            actor,
            "delivery.cancelled",
            f"grant:{advisory_id}:{recipient}",
            count=count,
            reason=reason,
        )
    return count


def deliver_backlog(
    session: Session, advisory_id: str, recipient: str, list_domain: str, now: datetime
) -> int:
    """Queue a new grant holder's copies of the advisory's posts so far, oldest first.

    A post counts if it went to the list's members: a copy held for moderation is held
    for the grant holder too (the moderator's decision covers it), a rejected one is
    skipped, and so are posts for the senders only or for nobody. A copy cancelled by an
    earlier revoked grant is queued again. Returns the number of copies queued or held.
    """
    rows = session.execute(
        select(Message.id, Delivery.status, Delivery.last_code, Delivery.hold_reason)
        .join(Delivery, Delivery.message_id == Message.id)
        .where(
            Message.advisory_id == advisory_id,
            Message.kind == MessageKind.POST,
            Delivery.member_id.is_not(None),
        )
        .order_by(Message.received_at, Message.id)
    ).all()
    copies: dict[str, list[tuple[str, str | None, str | None]]] = {}
    for message_id, status, last_code, hold_reason in rows:
        copies.setdefault(message_id, []).append((status, last_code, hold_reason))
    existing = {
        d.message_id: d
        for d in session.execute(
            select(Delivery).where(
                Delivery.recipient == recipient,
                Delivery.advisory_id == advisory_id,
                Delivery.member_id.is_(None),
            )
        ).scalars()
    }
    count = 0
    for message_id, states in copies.items():
        if all(s == DeliveryStatus.FAILED and c == REJECTED for s, c, _ in states):
            continue
        moderated = any(
            s == DeliveryStatus.HELD and h == HoldReason.MODERATION for s, _, h in states
        )
        status = DeliveryStatus.HELD if moderated else DeliveryStatus.QUEUED
        code = MODERATION_HOLD if moderated else None
        delivery = existing.get(message_id)
        if delivery is None:
            session.add(
                Delivery(
                    message_id=message_id,
                    recipient=recipient,
                    plaintext_allowed=False,
                    copy_message_id=copy_message_id(list_domain),
                    advisory_id=advisory_id,
                    status=status,
                    last_code=code,
                    hold_reason=code,
                    next_attempt_at=now,
                )
            )
        elif delivery.status == DeliveryStatus.FAILED and delivery.last_code == "cancelled":
            delivery.status, delivery.next_attempt_at = status, now
            delivery.last_code, delivery.last_reason = code, None
            delivery.hold_reason = code
        else:
            continue
        count += 1
    if count:
        audit.record(
            session,
            RELAY_ACTOR,
            "delivery.backlog",
            f"grant:{advisory_id}:{recipient}",
            count=count,
        )
    return count


# Holds until a lift, or until a key

# `last_code` of a delivery held only because an advisory is under embargo.
EMBARGO_HOLD = "embargo"


def hold_for_lift(
    session: Session, delivery: Delivery, advisory_id: str, reason: str, rule: str
) -> None:
    """Hold a copy until `advisory_id` is lifted (its own advisory, or one its text quotes),
    in the caller's transaction; the lift's `release_embargo_holds` queues it again."""
    delivery.held_for = None if advisory_id == delivery.advisory_id else advisory_id
    hold(
        session,
        delivery,
        reason,
        why=HoldReason.EMBARGO,
        code=EMBARGO_HOLD,
        until_lift_of=advisory_id,
        rule=rule,
    )


def release_embargo_holds(session: Session, advisory_id: str, now: datetime) -> int:
    """At the lift: deliveries held only until this advisory's lift go back to the queue
    (the dispatcher asks the forwarding rules again before it sends them)."""
    result = session.execute(
        update(Delivery)
        .where(
            Delivery.status == DeliveryStatus.HELD,
            Delivery.hold_reason == HoldReason.EMBARGO,
            (Delivery.held_for == advisory_id)
            | (Delivery.held_for.is_(None) & (Delivery.advisory_id == advisory_id)),
        )
        .values(
            status=DeliveryStatus.QUEUED,
            hold_reason=None,
            next_attempt_at=now,
            held_for=None,
            last_reason="released at the lift of the embargo",
        )
        .execution_options(synchronize_session=False)
    )
    count = rowcount(result) or 0
    if count:
        audit.record(
            session,
            RELAY_ACTOR,
            "delivery.released",
            f"advisory:{advisory_id}",
            count=count,
            reason="embargo lifted",
        )
    return count


# Start of `last_reason` of a delivery held because its recipient had no usable key.
NO_KEY_HOLD = "no usable key"  # how `last_reason` of a HoldReason.NO_KEY hold begins


def release_key_holds(session: Session, member_id: int, actor: str, now: datetime) -> int:
    """A member has a usable key again: its deliveries held for want of one go back to
    the queue. Deliveries held for any other reason (the embargo) stay held."""
    result = session.execute(
        update(Delivery)
        .where(
            Delivery.member_id == member_id,
            Delivery.status == DeliveryStatus.HELD,
            Delivery.hold_reason == HoldReason.NO_KEY,
        )
        .values(
            status=DeliveryStatus.QUEUED, hold_reason=None, next_attempt_at=now, lease_until=None
        )
        .execution_options(synchronize_session=False)
    )
    count = rowcount(result) or 0
    if count:
        audit.record(
            session,
            actor,
            "delivery.released",
            f"member:{member_id}",
            count=count,
            reason="a usable key was imported",
        )
    return count


def held_posts(session: Session) -> list[tuple[Message, int]]:
    """Posts waiting for a moderator, with how many copies each holds."""
    rows = session.execute(
        select(Message, func.count(Delivery.id))
        .join(Delivery, Delivery.message_id == Message.id)
        .where(
            Delivery.status == DeliveryStatus.HELD, Delivery.hold_reason == HoldReason.MODERATION
        )
        .group_by(Message.id)
        .order_by(Message.received_at)
    ).all()
    return [(message, count) for message, count in rows]


def moderate(session: Session, message_id: str, actor: str, *, release: bool, reason: str) -> int:
    """Release a held post to its audience, or reject it: every held copy at once."""
    deliveries = (
        session.execute(
            select(Delivery).where(
                Delivery.message_id == message_id,
                Delivery.status == DeliveryStatus.HELD,
                Delivery.hold_reason == HoldReason.MODERATION,
            )
        )
        .scalars()
        .all()
    )
    if not deliveries:
        raise RelayError(f"no post {message_id} is waiting for moderation")
    for delivery in deliveries:
        delivery.hold_reason = None
        if release:
            delivery.status = DeliveryStatus.QUEUED
            delivery.next_attempt_at = utcnow()
            delivery.last_code, delivery.last_reason = None, None
        else:
            delivery.status = DeliveryStatus.FAILED
            delivery.last_code, delivery.last_reason = REJECTED, reason
    audit.record(
        session,
        actor,
        "post.released" if release else "post.rejected",
        message_id,
        copies=len(deliveries),
        reason=reason or None,
    )
    return len(deliveries)

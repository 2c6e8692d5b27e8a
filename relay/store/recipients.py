"""Copies that follow their recipient: queued when one arrives (the backlog a new member or
grant holder is owed), stopped when one leaves (a member removed or suspended, a grant
revoked), released when one becomes reachable (a usable key imported).

Each writes delivery state through relay/store/delivery_queue.py's `mark_failed` and
`requeue`, in the caller's transaction.
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session
from sqlalchemy.sql import Select

from relay.core.database import rowcount
from relay.model import Delivery, DeliveryStatus, FailureReason, HoldReason, Message, MessageKind
from relay.store import audit
from relay.store.delivery_queue import (
    CANCELLED,
    RELAY_ACTOR,
    copy_message_id,
    mark_failed,
    requeue,
)

_UNSENT = (
    DeliveryStatus.QUEUED,
    DeliveryStatus.DEFERRED,
    DeliveryStatus.HELD,
    DeliveryStatus.ACTIVE,
)
# Copies stopped because their recipient left: queued again when it comes back.
_WITHDRAWN = (FailureReason.REMOVED, FailureReason.GRANT_REVOKED)


# Leaving


def cancel_member(session: Session, member_id: int, actor: str, reason: str) -> int:
    """Stop every unsent delivery to a member at once (removal or suspension)."""
    query = select(Delivery).where(Delivery.member_id == member_id, Delivery.status.in_(_UNSENT))
    return _withdraw(session, query, FailureReason.REMOVED, actor, reason, f"member:{member_id}")


def cancel_grant(
    session: Session, advisory_id: str, recipient: str, actor: str, reason: str
) -> int:
    """Stop every unsent copy of an advisory's messages to a grant holder at once."""
    query = select(Delivery).where(
        Delivery.advisory_id == advisory_id,
        Delivery.recipient == recipient,
        Delivery.member_id.is_(None),
        Delivery.status.in_(_UNSENT),
    )
    subject = f"grant:{advisory_id}:{recipient}"
    return _withdraw(session, query, FailureReason.GRANT_REVOKED, actor, reason, subject)


def _withdraw(
    session: Session,
    query: Select[Delivery],
    why: FailureReason,
    actor: str,
    reason: str,
    subject: str,
) -> int:
    deliveries = session.execute(query).scalars().all()
    for delivery in deliveries:
        mark_failed(delivery, why, CANCELLED, reason)
    if deliveries:
        audit.record(
            session, actor, "delivery.cancelled", subject, count=len(deliveries), reason=reason
        )
    return len(deliveries)


# Arriving


def deliver_backlog(
    session: Session, advisory_id: str, recipient: str, list_domain: str, now: datetime
) -> int:
    """Queue a new grant holder's copies of the advisory's posts so far (`queue_backlog`),
    audited under the grant. Returns the number of copies queued or held."""
    queued = queue_backlog(session, [advisory_id], recipient, list_domain, now)
    count = sum(len(message_ids) for message_ids in queued.values())
    if count:
        audit.record(
            session,
            RELAY_ACTOR,
            "delivery.backlog",
            f"grant:{advisory_id}:{recipient}",
            count=count,
        )
    return count


def queue_backlog(
    session: Session,
    advisory_ids: Collection[str],
    recipient: str,
    list_domain: str,
    now: datetime,
    *,
    member_id: int | None = None,
) -> dict[str, list[str]]:
    """Queue a newcomer's copies of these advisories' posts so far, oldest first, in the
    caller's transaction; `member_id` when the newcomer is a member.

    A post counts if it went to the list's members: a copy held for moderation is held for
    the newcomer too (the moderator's decision covers it), a post the moderator rejected
    is skipped, and so are posts for the senders only or for nobody. A copy the newcomer
    already has stays as it is, except one stopped when it left (a member removed, a grant
    revoked), which is queued again. Returns the message ids queued or held, by advisory.
    """
    owed = _owed(session, advisory_ids)
    had = {
        d.message_id: d
        for d in session.execute(
            select(Delivery).where(
                Delivery.recipient == recipient, Delivery.message_id.in_(list(owed))
            )
        ).scalars()
    }
    queued: dict[str, list[str]] = {}
    for message_id, (advisory_id, held) in owed.items():
        earlier = had.get(message_id)
        if earlier is None:
            session.add(
                Delivery(
                    message_id=message_id,
                    member_id=member_id,
                    recipient=recipient,
                    plaintext_allowed=False,
                    copy_message_id=copy_message_id(list_domain),
                    advisory_id=advisory_id,
                    status=DeliveryStatus.QUEUED if held is None else DeliveryStatus.HELD,
                    last_code=held,
                    hold_reason=held,
                    next_attempt_at=now,
                )
            )
        elif earlier.status == DeliveryStatus.FAILED and earlier.failure_reason in _WITHDRAWN:
            earlier.member_id = member_id
            requeue(earlier, now, held=held)
            earlier.last_code, earlier.last_reason = held, None
        else:
            continue
        queued.setdefault(advisory_id, []).append(message_id)
    return queued


def _owed(
    session: Session, advisory_ids: Collection[str]
) -> dict[str, tuple[str, HoldReason | None]]:
    """The posts of these advisories that went to the members, oldest first by advisory:
    each with its advisory and the hold a newcomer's copy starts with."""
    rows = session.execute(
        select(
            Message.id,
            Message.advisory_id,
            Delivery.status,
            Delivery.hold_reason,
            Delivery.failure_reason,
        )
        .join(Delivery, Delivery.message_id == Message.id)
        .where(
            Message.advisory_id.in_(list(advisory_ids)),
            Message.kind == MessageKind.POST,
            Delivery.member_id.is_not(None),
        )
        .order_by(Message.advisory_id, Message.received_at, Message.id)
    ).all()
    copies: dict[str, list[Any]] = {}  # the rows of each message's members' copies
    for row in rows:
        copies.setdefault(row.id, []).append(row)
    owed: dict[str, tuple[str, HoldReason | None]] = {}
    for message_id, states in copies.items():
        if all(s.failure_reason == FailureReason.MODERATOR_REJECTED for s in states):
            continue
        moderated = any(
            s.status == DeliveryStatus.HELD and s.hold_reason == HoldReason.MODERATION
            for s in states
        )
        owed[message_id] = (states[0].advisory_id, HoldReason.MODERATION if moderated else None)
    return owed


# Becoming reachable


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

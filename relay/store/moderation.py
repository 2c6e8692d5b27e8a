"""Members' posts held for a moderator (the list's posting policy `moderate`): the posts
that wait, and the moderator's decision, which settles every held copy of a post at once.
"""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from relay.core.errors import RelayError
from relay.model import Delivery, DeliveryStatus, FailureReason, HoldReason, Message, utcnow
from relay.store import audit
from relay.store.delivery_queue import mark_failed, requeue

REJECTED = "rejected"  # `last_code` of a post's copies a moderator refused


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
    now = utcnow()
    for delivery in deliveries:
        if release:
            requeue(delivery, now)
            delivery.last_code, delivery.last_reason = None, None
        else:
            mark_failed(delivery, FailureReason.MODERATOR_REJECTED, REJECTED, reason)
    audit.record(
        session,
        actor,
        "post.released" if release else "post.rejected",
        message_id,
        copies=len(deliveries),
        reason=reason or None,
    )
    return len(deliveries)

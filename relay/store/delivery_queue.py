"""The durable queue: claiming, the outcome of each attempt, and the few functions that
write a delivery's state.

States (Postfix names): queued -> active -> sent, or deferred (retried at
`next_attempt_at`), held (waits for its `HoldReason` to pass), failed (settled unsent, for
its `FailureReason`). relay/store/incoming.py and relay/store/notices.py add deliveries;
from then on a status changes only in relay/store/: through `hold`, `mark_failed`,
`bounced` and `requeue` here, or a bulk update (a claim, a lift, a key imported), whoever
decides it: the dispatcher's outcomes, a bounce (relay/app/bounces.py), the moderator
(relay/store/moderation.py), a recipient arriving, leaving or becoming reachable
(relay/store/recipients.py).
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import Table, bindparam, false, or_, select, update
from sqlalchemy.orm import Session

from relay.core.database import Database, rowcount
from relay.core.errors import RelayError
from relay.model import (
    Delivery,
    DeliveryStatus,
    FailureReason,
    HoldReason,
    MemberState,
    utcnow,
)
from relay.model.messages import Bounce
from relay.store import audit

RELAY_ACTOR = "relay"
CANCELLED = "cancelled"  # `last_code` of a copy stopped before it was sent
INTERNAL = "internal"  # `last_code` of a copy whose preparation or sending raised


def new_id() -> str:
    return secrets.token_hex(8)


def copy_message_id(domain: str) -> str:
    """A fresh Message-ID for one copy, fixed at accept time so a resend reuses it."""
    return f"<{secrets.token_hex(12)}@{domain}>"


MODERATION_HOLD = HoldReason.MODERATION


# Claiming and outcomes


def recover(db: Database, owners: Iterable[str | None] = (None, "")) -> int:
    """Copies left active by a node that is gone (crashed, killed) go back to the queue:
    at a node's start those it leased itself, and, on the scheduler's node, those of nodes
    whose heartbeat stopped (relay/store/cluster.py names them). `None` and "" stand for
    leases from before nodes were named."""
    names = [o for o in owners if o]
    orphaned: Any = Delivery.lease_owner.in_(names) if names else false()
    if None in owners or "" in owners:
        orphaned = or_(orphaned, Delivery.lease_owner.is_(None), Delivery.lease_owner == "")
    with db.transaction() as session:
        result = session.execute(
            update(Delivery)
            .where(Delivery.status == DeliveryStatus.ACTIVE, orphaned)
            .values(status=DeliveryStatus.QUEUED, lease_until=None, lease_owner=None)
        )
        return rowcount(result) or 0


def claim_due(
    db: Database, now: datetime, limit: int, lease_for: timedelta, owner: str = ""
) -> list[int]:
    """Lease up to `limit` due deliveries to the node `owner`, oldest first.

    Several nodes claim at once: on PostgreSQL the rows are locked as they are selected
    (`FOR UPDATE SKIP LOCKED`, so another node passes over them to the next), and on every
    backend the UPDATE re-checks that each row is still claimable and reports the rows it
    took (RETURNING), so a row is never leased to two nodes."""
    claimable = (
        Delivery.status.in_((DeliveryStatus.QUEUED, DeliveryStatus.DEFERRED))
        & (Delivery.next_attempt_at <= now)
    ) | ((Delivery.status == DeliveryStatus.ACTIVE) & (Delivery.lease_until < now))
    with db.transaction() as session:
        ids = list(
            session.execute(
                select(Delivery.id)
                .where(claimable)
                .order_by(Delivery.next_attempt_at, Delivery.id)
                .limit(limit)
                .with_for_update(skip_locked=True)
            ).scalars()
        )
        if not ids:
            return []
        taken = session.execute(
            update(Delivery)
            .where(Delivery.id.in_(ids), claimable)
            .values(status=DeliveryStatus.ACTIVE, lease_until=now + lease_for, lease_owner=owner)
            .returning(Delivery.id)
            .execution_options(synchronize_session=False)
        ).scalars()
        return sorted(taken, key=ids.index)


def release(db: Database, delivery_ids: list[int]) -> None:
    """Give back claimed deliveries that were never started (orderly shutdown)."""
    with db.transaction() as session:
        session.execute(
            update(Delivery)
            .where(Delivery.id.in_(delivery_ids), Delivery.status == DeliveryStatus.ACTIVE)
            .values(status=DeliveryStatus.QUEUED, lease_until=None, lease_owner=None)
        )


@dataclass(frozen=True)
class Attempt:
    """What one delivery attempt came to, as reported by the transport."""

    delivery_id: int
    # "sent" | "temporary" | "permanent" | "error" (the relay's own, unexpected) |
    # "unprepared" (the database failed before anything was sent)
    result: str
    code: str
    reason: str
    fingerprints: tuple[str, ...] = ()
    # Why a permanent attempt failed; None: the next hop refused it (REJECTED).
    failure: FailureReason | None = None

    @classmethod
    def withdrawn(cls, delivery_id: int, *, to_member: bool) -> Attempt:
        """A copy its recipient may no longer have (a member no longer active, a grant no
        longer accepted): settled without an attempt on the wire."""
        why, words = (
            (FailureReason.REMOVED, "member is not active")
            if to_member
            else (FailureReason.GRANT_REVOKED, "recipient holds no accepted grant")
        )
        return cls(delivery_id, "permanent", CANCELLED, words, failure=why)

    @classmethod
    def unprepared(cls, delivery_id: int, error: BaseException) -> Attempt:
        """The database failed while the copy was being prepared: queued again, uncounted."""
        words = f"database error: {type(error).__name__}"
        return cls(delivery_id, "unprepared", INTERNAL, words)

    @classmethod
    def error(cls, delivery_id: int, error: BaseException) -> Attempt:
        """An unexpected error of the relay's own while preparing or sending the copy."""
        words = f"{type(error).__name__}: {error}"[:500]
        return cls(delivery_id, "error", INTERNAL, words, failure=FailureReason.INTERNAL_ERROR)


@dataclass(frozen=True)
class Retry:
    """The retry schedule: exponential backoff, given up after the queue lifetime, or
    after `max_errors` unexpected errors of the relay's own."""

    min_backoff: timedelta
    max_backoff: timedelta
    lifetime: timedelta
    max_errors: int = 5


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
                if outcome.result == "unprepared":
                    delivery.status, delivery.next_attempt_at = DeliveryStatus.QUEUED, now
                    delivery.lease_until, delivery.lease_owner = None, None
                    delivery.last_reason = outcome.reason
                    continue  # nothing to tell: the copy was not attempted
                if outcome.result == "temporary":
                    defer(session, delivery, outcome.code, outcome.reason, now=now, retry=retry)
                elif outcome.result == "error":
                    errored(session, delivery, outcome.reason, now=now, retry=retry)
                else:
                    why = outcome.failure or FailureReason.REJECTED
                    fail(session, delivery, outcome.code, outcome.reason, why=why)
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
    expired = now - delivery.created_at >= retry.lifetime
    given_up = (FailureReason.EXPIRED, f"queue lifetime exceeded; last error: {reason}")
    _again_or_fail(
        session,
        delivery,
        code,
        reason,
        tries=delivery.attempts,
        given_up=given_up if expired else None,
        deferred="delivery.deferred",
        now=now,
        retry=retry,
        attempts=delivery.attempts,
    )


def errored(
    session: Session, delivery: Delivery, reason: str, *, now: datetime, retry: Retry
) -> None:
    """An unexpected error: counted and retried on the schedule, failed at `max_errors`, so
    no copy is leased and retried forever."""
    delivery.errors += 1
    exhausted = delivery.errors >= retry.max_errors
    words = f"internal error {delivery.errors} times; last: {reason}"
    _again_or_fail(
        session,
        delivery,
        INTERNAL,
        f"internal error: {reason}",
        tries=delivery.errors,
        given_up=(FailureReason.INTERNAL_ERROR, words) if exhausted else None,
        deferred="delivery.error",
        now=now,
        retry=retry,
        errors=delivery.errors,
    )


def _again_or_fail(
    session: Session,
    delivery: Delivery,
    code: str,
    reason: str,
    *,
    tries: int,
    given_up: tuple[FailureReason, str] | None,
    deferred: str,
    now: datetime,
    retry: Retry,
    **detail: object,
) -> None:
    """The retry schedule's one step: deferred by the backoff of `tries`, or failed for
    `given_up` (its reason and words); audited either way."""
    delivery.lease_until = None
    delivery.last_code, delivery.last_reason = code, reason
    if given_up is not None:
        why, words = given_up
        mark_failed(delivery, why, code, words)
        action = "delivery.failed"
    else:
        delivery.status = DeliveryStatus.DEFERRED
        delivery.next_attempt_at = now + backoff(tries, retry.min_backoff, retry.max_backoff)
        action = deferred
    audit.record(
        session,
        RELAY_ACTOR,
        action,
        str(delivery.id),
        recipient=delivery.recipient,
        code=code,
        message=delivery.message_id,
        **detail,
    )


def fail(
    session: Session, delivery: Delivery, code: str, reason: str, *, why: FailureReason
) -> None:
    """A permanent failure of an attempt, audited."""
    delivery.attempts += 1
    mark_failed(delivery, why, code, reason)
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


def mark_failed(delivery: Delivery, why: FailureReason, code: str, reason: str) -> None:
    """Settle a delivery unsent, in the caller's transaction: `why` is the reason selections
    use, `code` and `reason` the last result in words."""
    delivery.status = DeliveryStatus.FAILED
    delivery.failure_reason = why
    delivery.hold_reason = None  # a hold reason belongs to a held delivery only
    delivery.lease_until = None
    delivery.last_code, delivery.last_reason = code, reason


# Statuses in which a hard bounce settles a copy: sent, deferred by a later attempt, or
# still active when a quick bounce overtakes the record of its sending (which then finds
# it no longer active and leaves it failed).
BOUNCEABLE = (DeliveryStatus.SENT, DeliveryStatus.DEFERRED, DeliveryStatus.ACTIVE)


def bounced(
    session: Session, delivery: Delivery, status: str, reason: str, *, now: datetime
) -> Bounce:
    """A notification said the copy failed for good: failed (`BOUNCED`, its status and
    diagnostic) if it is `BOUNCEABLE`, recorded once as the delivery's `Bounce`, and audited,
    in the caller's transaction. A copy in any other state (queued again by an
    administrator, cancelled meanwhile) keeps its state."""
    settled = delivery.status in BOUNCEABLE
    if settled:
        mark_failed(delivery, FailureReason.BOUNCED, status, reason)
    bounce = Bounce(delivery_id=delivery.id, member_id=delivery.member_id, at=now, status=status)
    session.add(bounce)
    audit.record(
        session,
        RELAY_ACTOR,
        "delivery.bounced",
        str(delivery.id),
        recipient=delivery.recipient,
        code=status,
        message=delivery.message_id,
        failed=settled,
    )
    return bounce


def requeue(delivery: Delivery, now: datetime, *, held: HoldReason | None = None) -> None:
    """Put a held or failed delivery back for an attempt at `now`, or, with `held`, hold it
    for that reason instead; `last_code` and `last_reason` are the caller's to change."""
    delivery.status = DeliveryStatus.QUEUED if held is None else DeliveryStatus.HELD
    delivery.hold_reason = held
    delivery.failure_reason = None
    delivery.errors = 0  # an administrator's retry starts the count of errors again
    delivery.next_attempt_at, delivery.lease_until = now, None


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
    requeue(delivery, utcnow())
    audit.record(session, actor, "delivery.retried", str(delivery_id), old=old, new="queued")
    return delivery


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


# How `last_reason` of a HoldReason.NO_KEY hold begins (relay/store/recipients.py releases it).
NO_KEY_HOLD = "no usable key"

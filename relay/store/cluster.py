"""The nodes' reports of themselves and the leases they hold, in the shared database.

A lease is taken or renewed by one conditional UPDATE: it succeeds only for its holder or
once it expired, so two nodes can never both hold it. Expiry is by the nodes' clocks (keep
them in NTP sync); a lift or a reminder is a conditional change of its own, so even two
nodes that both believed they led would do it once.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import and_, case, func, literal, or_, select, update

from relay.core.database import Database, rowcount
from relay.model import Advisory, AdvisoryState, Delivery, DeliveryStatus, Lease, Node

SCHEDULER = "scheduler"


@dataclass(frozen=True)
class Report:
    """What a node says of itself at a heartbeat."""

    name: str
    host: str
    pid: int
    started_at: datetime
    last_claim_at: datetime | None
    last_delivery_at: datetime | None
    errors_last_hour: int
    restarts: int
    failing: dict[str, str]


def heartbeat(db: Database, report: Report, now: datetime) -> None:
    with db.transaction() as session:
        node = session.get(Node, report.name)
        if node is None:
            node = Node(name=report.name)
            session.add(node)
        node.host, node.pid, node.started_at = report.host, report.pid, report.started_at
        node.heartbeat_at, node.stopped_at = now, None
        node.last_claim_at = report.last_claim_at or node.last_claim_at
        node.last_delivery_at = report.last_delivery_at or node.last_delivery_at
        node.errors_last_hour, node.restarts = report.errors_last_hour, report.restarts
        node.failing = dict(report.failing)


def stopped(db: Database, name: str, now: datetime) -> None:
    with db.transaction() as session:
        session.execute(update(Node).where(Node.name == name).values(stopped_at=now))


def take(db: Database, lease: str, holder: str, now: datetime, ttl: timedelta) -> bool:
    """Take or renew `lease` for `holder` until now + ttl; False while another holds it."""
    with db.transaction() as session:
        current = session.get(Lease, lease)
        if current is None:  # the migration made it; a hand-made database may not have
            session.add(Lease(name=lease, holder=None, expires_at=now))
            session.flush()
        # acquired_at: kept by a renewal, now for a new holder (the old value is read
        # before the row changes, in the same statement).
        taken = session.execute(
            update(Lease)
            .where(
                Lease.name == lease,
                or_(Lease.holder == holder, Lease.holder.is_(None), Lease.expires_at < now),
            )
            .values(
                holder=holder,
                expires_at=now + ttl,
                acquired_at=case(
                    (
                        and_(Lease.holder == holder, Lease.acquired_at.is_not(None)),
                        Lease.acquired_at,
                    ),
                    else_=literal(now, Lease.acquired_at.type),
                ),
            )
        )
        return rowcount(taken) == 1


def give_up(db: Database, lease: str, holder: str) -> None:
    """Let go of a lease at an orderly stop, so another node takes it at once."""
    with db.transaction() as session:
        session.execute(
            update(Lease)
            .where(Lease.name == lease, Lease.holder == holder)
            .values(holder=None, acquired_at=None)
        )


def dead_nodes(db: Database, now: datetime, silent_for: timedelta) -> list[str]:
    """Nodes that stopped, or have not reported for `silent_for`: their leases are orphans."""
    with db.transaction() as session:
        return list(
            session.execute(
                select(Node.name).where(
                    or_(Node.stopped_at.is_not(None), Node.heartbeat_at < now - silent_for)
                )
            ).scalars()
        )


# What `relay status` reads.


@dataclass(frozen=True)
class Overview:
    nodes: list[Node]
    scheduler: Lease | None
    queue: dict[str, int]  # status -> copies
    oldest_due_at: datetime | None  # the longest-waiting copy that is due
    next_lift: tuple[str, datetime] | None


def overview(db: Database, now: datetime) -> Overview:
    with db.transaction() as session:
        nodes = list(session.execute(select(Node).order_by(Node.name)).scalars())
        lease = session.get(Lease, SCHEDULER)
        queue = {
            str(status): count
            for status, count in session.execute(
                select(Delivery.status, func.count()).group_by(Delivery.status)
            ).all()
        }
        oldest = session.scalar(
            select(func.min(Delivery.next_attempt_at)).where(
                Delivery.status.in_((DeliveryStatus.QUEUED, DeliveryStatus.DEFERRED)),
                Delivery.next_attempt_at <= now,
            )
        )
        lift = session.execute(
            select(Advisory.id, Advisory.lift_at)
            .where(Advisory.state == AdvisoryState.EMBARGOED, Advisory.lift_at.is_not(None))
            .order_by(Advisory.lift_at)
            .limit(1)
        ).first()
    next_lift = (str(lift[0]), lift[1]) if lift is not None and lift[1] is not None else None
    return Overview(nodes, lease, queue, oldest, next_lift)

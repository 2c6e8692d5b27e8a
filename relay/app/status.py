"""How the relay is doing, for people and monitors (`relay status`): each node, the
scheduler's lease, the queue and the next lift, and what is wrong."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from relay.core.config import Settings
from relay.core.database import Database
from relay.store import cluster

# A due copy that has waited this long while nodes run means delivery is stuck.
STUCK_AFTER = timedelta(minutes=10)


@dataclass(frozen=True)
class NodeStatus:
    name: str
    host: str
    pid: int
    running: bool
    leads_scheduler: bool
    started_at: datetime
    heartbeat_at: datetime
    stopped_at: datetime | None
    last_claim_at: datetime | None
    last_delivery_at: datetime | None
    errors_last_hour: int
    restarts: int
    failing: dict[str, str]


@dataclass(frozen=True)
class Status:
    checked_at: datetime
    nodes: list[NodeStatus]
    scheduler_leader: str | None
    scheduler_leader_since: datetime | None  # when it took the lease
    queue: dict[str, int]
    oldest_due_at: datetime | None
    oldest_due_age_s: float | None
    next_lift: dict[str, object] | None
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def status(db: Database, settings: Settings, now: datetime) -> Status:
    seen = cluster.overview(db, now)
    silent_after = settings.cluster.failover_after
    lease = seen.scheduler
    leader_holder = lease.holder if lease is not None and lease.expires_at > now else None
    nodes = [
        NodeStatus(
            name=n.name,
            host=n.host,
            pid=n.pid,
            running=n.stopped_at is None and now - n.heartbeat_at <= silent_after,
            leads_scheduler=bool(leader_holder and leader_holder.startswith(f"{n.name}#")),
            started_at=n.started_at,
            heartbeat_at=n.heartbeat_at,
            stopped_at=n.stopped_at,
            last_claim_at=n.last_claim_at,
            last_delivery_at=n.last_delivery_at,
            errors_last_hour=n.errors_last_hour,
            restarts=n.restarts,
            failing=dict(n.failing or {}),
        )
        for n in seen.nodes
    ]
    leader = next((n.name for n in nodes if n.leads_scheduler), None)
    since = lease.acquired_at if leader is not None and lease is not None else None
    age = (now - seen.oldest_due_at).total_seconds() if seen.oldest_due_at else None
    problems = []
    running = [n for n in nodes if n.running]
    if not running:
        problems.append("no node is running")
    elif leader is None:
        problems.append("no node leads the scheduler: lifts and reminders wait")
    for node in running:
        for task, error in sorted(node.failing.items()):
            problems.append(f"node {node.name}: {task} is failing: {error}")
    for node in nodes:
        if not node.running and node.stopped_at is None:
            silent = int((now - node.heartbeat_at).total_seconds())
            problems.append(f"node {node.name} stopped answering {silent} s ago")
    if age is not None and age > STUCK_AFTER.total_seconds():
        problems.append(f"the oldest due copy has waited {int(age)} s")
    next_lift = (
        {"advisory": seen.next_lift[0], "lift_at": seen.next_lift[1]} if seen.next_lift else None
    )
    return Status(
        now, nodes, leader, since, seen.queue, seen.oldest_due_at, age, next_lift, problems
    )

"""The Prometheus endpoint (`[metrics]`, GET /metrics): what this process did, and what
the database holds.

Two kinds of numbers. What the SMTP edge answered (accepts, and refusals by reply code)
is counted in this process from the edge's own `event` lines (relay/core/logs.py
`observe`), so the edge knows nothing of metrics; the counters start at zero with the
process, as Prometheus expects of counters. Everything else is read from the database at
scrape time by `DatabaseCollector`, in one short read transaction under a time limit:
the numbers are the whole list's, the same from every node (aggregate them with `max`,
not `sum`), and right across restarts. A database that does not answer in time, or
fails, makes `relay_database_up 0` and leaves the database's numbers out: the scrape
itself still succeeds, so the alert is about the database, not about a failed scrape.

The queries live in one place each below (`_DUE`, `_BOUNCES`, `_SCHEDULED_LIFTS`), so
a change in how the relay records something is one edit here.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from prometheus_client import CollectorRegistry, Counter, ProcessCollector, start_http_server
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import ColumnElement, String, func, literal, select, text
from sqlalchemy.orm import Session

from relay.app import advisories
from relay.core.config import MetricsSettings
from relay.core.database import Database
from relay.core.errors import RelayError
from relay.core.logs import clean, event, observe
from relay.model import (
    Advisory,
    AuditEvent,
    Delivery,
    DeliveryStatus,
    FailureReason,
    Incident,
    IncidentKind,
)
from relay.store.delivery_queue import RELAY_ACTOR

log = logging.getLogger("relay.metrics")

# A scrape waits this long for the database, then reports it down.
READ_LIMIT = 5.0
# Upper bounds (seconds) of the lift lateness buckets: a lift is on time within a
# heartbeat, late after minutes, and an outage shows in the last buckets.
LATENESS_BUCKETS = (1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 900.0, 3600.0)

# The edge's `event` steps that end in a refusal; the reply code is their `code` field.
_REFUSAL_STEPS = frozenset({"rejected", "busy"})


def _due(now: datetime) -> ColumnElement[bool]:
    """Copies due for an attempt: what delivery_queue.claim_due would lease now (waiting
    ones whose time came, and active ones whose lease ran out)."""
    waiting = Delivery.status.in_((DeliveryStatus.QUEUED, DeliveryStatus.DEFERRED))
    return (waiting & (Delivery.next_attempt_at <= now)) | (
        (Delivery.status == DeliveryStatus.ACTIVE) & (Delivery.lease_until < now)
    )


# A hard bounce settles its copy failed with this reason (relay/app/bounces.py; an audit
# row "delivery.bounced" too); counting copies counts each bounced copy once.
BOUNCED = FailureReason.BOUNCED
_BOUNCES = select(func.count()).select_from(Delivery).where(Delivery.failure_reason == BOUNCED)

# Lifts the scheduler made (the relay's actor; an administrator's or a confirmed early
# lift has another), with the lift time they were due at and when they happened.
_SCHEDULED_LIFTS = (
    select(Advisory.lift_at, Advisory.lifted_at)
    .join(
        AuditEvent,
        AuditEvent.subject == literal(advisories.subject(""), String) + Advisory.id,
    )
    .where(
        AuditEvent.action == "advisory.lifted",
        AuditEvent.actor == RELAY_ACTOR,
        Advisory.lift_at.is_not(None),
        Advisory.lifted_at.is_not(None),
    )
)


@dataclass
class Snapshot:
    """What one scrape read from the database."""

    deliveries: dict[str, int] = field(default_factory=dict)
    due: int = 0
    oldest_due_age: float = 0.0
    bounces: int = 0
    leaks: dict[str, int] = field(default_factory=dict)
    lateness: list[float] = field(default_factory=list)

    def families(self) -> Iterable[Metric]:
        states = GaugeMetricFamily(
            "relay_deliveries", "Copies in the database, by state.", labels=["state"]
        )
        for state in DeliveryStatus:
            states.add_metric([state.value], self.deliveries.get(state.value, 0))
        yield states
        yield GaugeMetricFamily(
            "relay_queue_due", "Copies due for an attempt now (the queue depth).", value=self.due
        )
        yield GaugeMetricFamily(
            "relay_queue_oldest_due_age_seconds",
            "Age of the oldest copy due for an attempt (0 when none is due).",
            value=self.oldest_due_age,
        )
        yield GaugeMetricFamily(
            "relay_bounces", "Copies that bounced for good (hard bounces).", value=self.bounces
        )
        leaks = GaugeMetricFamily(
            "relay_leak_reports",
            "Leaks and attempted leaks recorded as incidents, by how the relay learnt of them.",
            labels=["kind"],
        )
        for kind in sorted({*(k.value for k in IncidentKind), *self.leaks}):
            leaks.add_metric([kind], self.leaks.get(kind, 0))
        yield leaks
        yield _histogram(
            "relay_lift_lateness_seconds",
            "Seconds from an advisory's lift time to the scheduler's lift of it.",
            self.lateness,
        )


def _histogram(name: str, documentation: str, values: list[float]) -> HistogramMetricFamily:
    buckets = [(str(b), float(sum(1 for v in values if v <= b))) for b in LATENESS_BUCKETS]
    buckets.append(("+Inf", float(len(values))))
    return HistogramMetricFamily(name, documentation, buckets=buckets, sum_value=sum(values))


def read_snapshot(session: Session, now: datetime) -> Snapshot:
    """Every database number of one scrape, in the caller's (read) transaction."""
    snapshot = Snapshot()
    for state, count in session.execute(
        select(Delivery.status, func.count()).group_by(Delivery.status)
    ):
        snapshot.deliveries[str(state)] = int(count)
    due, oldest = session.execute(
        select(func.count(), func.min(Delivery.created_at)).where(_due(now))
    ).one()
    snapshot.due = int(due or 0)
    if oldest is not None:
        snapshot.oldest_due_age = max(0.0, (now - oldest).total_seconds())
    snapshot.bounces = int(session.scalar(_BOUNCES) or 0)
    for kind, count in session.execute(select(Incident.kind, func.count()).group_by(Incident.kind)):
        snapshot.leaks[str(kind)] = int(count)
    snapshot.lateness = [
        max(0.0, (lifted_at - lift_at).total_seconds())
        for lift_at, lifted_at in session.execute(_SCHEDULED_LIFTS)
        if lift_at is not None and lifted_at is not None
    ]
    return snapshot


class DatabaseCollector(Collector):
    """The database's numbers, read at each scrape; `relay_database_up` says whether the
    read worked. Reads run one at a time in a worker thread: a scrape that finds the
    previous read still hanging reports the database down at once rather than queueing
    another read behind it."""

    def __init__(
        self, db: Database, clock: Callable[[], datetime], *, limit: float = READ_LIMIT
    ) -> None:
        self.db = db
        self.clock = clock
        self.limit = limit
        self._worker = ThreadPoolExecutor(1, thread_name_prefix="metrics-db")
        self._reading = threading.Lock()

    def collect(self) -> Iterable[Metric]:
        snapshot = self._read()
        up = GaugeMetricFamily(
            "relay_database_up",
            "1 when the database answered this scrape in time, else 0 (its numbers left out).",
            value=0 if snapshot is None else 1,
        )
        yield up
        if snapshot is not None:
            yield from snapshot.families()

    def _read(self) -> Snapshot | None:
        if not self._reading.acquire(blocking=False):
            event(log, "metrics-database-busy", level=logging.WARNING, reason="read in progress")
            return None
        try:
            future = self._worker.submit(self._read_now)
        except RuntimeError:  # closed
            self._reading.release()
            return None
        try:
            return future.result(timeout=self.limit)
        except FutureTimeout:
            event(log, "metrics-database-slow", level=logging.WARNING, limit=self.limit)
        except Exception as exc:
            event(log, "metrics-database-failed", level=logging.WARNING, error=type(exc).__name__)
        return None

    def _read_now(self) -> Snapshot:
        try:
            with self.db.transaction() as session:
                if session.get_bind().dialect.name == "postgresql":
                    # The server ends the read itself if it runs past the limit.
                    millis = int(self.limit * 1000)
                    session.execute(text(f"SET LOCAL statement_timeout = {millis}"))
                return read_snapshot(session, self.clock())
        finally:
            self._reading.release()

    def close(self) -> None:
        self._worker.shutdown(wait=False, cancel_futures=True)


class EdgeCounters:
    """Accepts, and refusals by SMTP reply code, from the edge's `event` lines."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.accepted = Counter(
            "relay_smtp_accepted", "Posts accepted (250 2.0.0).", registry=registry
        )
        self.refused = Counter(
            "relay_smtp_refused",
            "Recipients and posts refused during the SMTP dialogue, by reply code.",
            ["code"],
            registry=registry,
        )

    def __call__(self, step: str, fields: Mapping[str, object]) -> None:
        if step == "accepted":
            self.accepted.inc()
        elif step in _REFUSAL_STEPS:
            # The relay's own codes ("550 5.7.1"): a handful, never a value from the wire.
            self.refused.labels(code=clean(fields.get("code", "unknown"), 16)).inc()


class Metrics:
    """The registry and its HTTP endpoint; `start` and `stop` with the relay."""

    def __init__(self, settings: MetricsSettings, db: Database, clock: Callable[[], datetime]):
        self.settings = settings
        self.registry = CollectorRegistry()
        self.edge = EdgeCounters(self.registry)
        self.database = DatabaseCollector(db, clock)
        self.registry.register(self.database)
        ProcessCollector(registry=self.registry)
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self._unobserve: Callable[[], None] | None = None

    @property
    def port(self) -> int:
        """The port it listens on (the kernel's choice for `port = 0`)."""
        assert self._server is not None
        return int(self._server.server_port)

    def start(self) -> None:
        """Count the edge's replies from now on and listen on `[metrics] host:port`."""
        where = f"{self.settings.host}:{self.settings.port}"
        try:
            self._server, self._thread = start_http_server(
                self.settings.port, addr=self.settings.host, registry=self.registry
            )
        except OSError as exc:
            raise RelayError(
                f"cannot listen for metrics on {where}: {exc.strerror or exc}"
            ) from None
        self._unobserve = observe(self.edge)
        event(log, "metrics listening", host=self.settings.host, port=self.port)

    def stop(self) -> None:
        """Stop listening (waits for a scrape in progress) and counting."""
        if self._unobserve is not None:
            self._unobserve()
            self._unobserve = None
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None
        self.database.close()

"""The Prometheus endpoint of a running relay, scraped over real HTTP: what the edge
answered (by SMTP code), the copies by state, the queue's depth and oldest due copy, lift
lateness, bounces and leak reports, and a database that does not answer.

Real SMTP in, real gpg, a capturing sink as the smarthost, SQLite or PostgreSQL.
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
import urllib.request
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TypeVar

import psycopg
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import update

from relay.app import advisory_admin, incidents
from relay.core import config as relay_config
from relay.core.config import MetricsSettings
from relay.core.database import Database
from relay.model import Advisory, AdvisoryState, Delivery, DeliveryStatus
from relay.runners.metrics import BOUNCED, DatabaseCollector, Metrics
from tests.support import databases
from tests.support.keys import KeyFactory
from tests.support.mail import pgp_mime_signed, text_entity
from tests.support.relayhome import (
    LIST,
    OffsetClock,
    RelayHome,
    RelayThread,
    distributors,
    migrated_database,
    smtp_post,
    write_config,
)
from tests.support.smtpsink import SmtpSink

METRICS = '[metrics]\nenabled = true\nhost = "127.0.0.1"\nport = 0\n'
T = TypeVar("T")
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(port: int) -> Samples:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as reply:
        assert reply.status == 200
        body = reply.read().decode("utf-8")
    samples: Samples = {}
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


def wait_for(check: Callable[[], T | None], what: str, timeout: float = 60) -> T:
    deadline = time.monotonic() + timeout
    while not (result := check()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)
    return result


@pytest.fixture
def home(tmp_path: Path, keys: KeyFactory, sink: SmtpSink) -> RelayHome:
    return distributors(tmp_path, keys, sink.port, members=2, extra=METRICS)


def _signed(home: RelayHome, keys: KeyFactory, body: str) -> bytes:
    src = keys.make("src", "src@example.org")
    return pgp_mime_signed(
        home.client(src),
        src.fingerprint,
        text_entity(body),
        subject="[EMBARGOED] metrics",
        sender=src.address,
        to=LIST,
    )


def test_counters_by_code_copies_by_state_and_the_queue(
    home: RelayHome, keys: KeyFactory, sink: SmtpSink
) -> None:
    clock = OffsetClock()
    with RelayThread(home.settings, clock=clock, dispatch=False) as relay:
        assert relay.relay is not None and relay.relay.metrics is not None
        port = relay.relay.metrics.port
        before = scrape(port)
        assert value(before, "relay_database_up") == 1
        assert value(before, "relay_smtp_accepted_total") == 0
        assert value(before, "relay_deliveries", state="queued") == 0
        assert value(before, "relay_queue_due") == 0
        assert value(before, "relay_queue_oldest_due_age_seconds") == 0

        code, _ = relay.run(smtp_post(relay.port, _signed(home, keys, "Embargoed details.\n")))
        assert code == 250
        for _ in range(2):
            code, _ = relay.run(smtp_post(relay.port, text_entity("Not signed.\n")))
            assert code == 550
        # An hour later by the relay's clock, nothing dispatched: both copies wait.
        clock.jump_to(datetime.now(UTC) + timedelta(hours=1))
        after = scrape(port)
    assert value(after, "relay_smtp_accepted_total") == 1
    assert value(after, "relay_smtp_refused_total", code="550 5.7.1") == 2
    assert value(after, "relay_deliveries", state="queued") == 2
    assert value(after, "relay_deliveries", state="sent") == 0
    assert value(after, "relay_queue_due") == 2
    age = value(after, "relay_queue_oldest_due_age_seconds")
    assert age is not None and 3600 <= age < 3600 + 600

    # Started again with the dispatcher: the copies go out, the queue empties.
    with RelayThread(home.settings) as relay:
        assert relay.relay is not None and relay.relay.metrics is not None
        port = relay.relay.metrics.port
        sink.wait_for(2, timeout=60)

        def all_sent() -> Samples | None:
            samples = scrape(port)
            return samples if value(samples, "relay_deliveries", state="sent") == 2 else None

        sent = wait_for(all_sent, "both copies recorded sent")
    assert value(sent, "relay_deliveries", state="queued") == 0
    assert value(sent, "relay_queue_due") == 0
    assert value(sent, "relay_queue_oldest_due_age_seconds") == 0
    assert value(sent, "relay_smtp_accepted_total") == 0  # a new process counts from zero
    assert value(sent, "relay_database_up") == 1


def test_lift_lateness_bounces_and_leak_reports_come_from_the_database(
    home: RelayHome, keys: KeyFactory
) -> None:
    lift_at = datetime.now(UTC).replace(microsecond=0) + timedelta(days=3)
    for advisory_id in ("ADV-2026-0101", "ADV-2026-0102"):
        advisory_admin.create_advisory(
            home.db,
            home.spool,
            home.settings,
            advisory_id,
            "A flaw",
            lift_at,
            "cli:test",
            now=lift_at - timedelta(days=1),
        )
    # The relay starts 42 s after the first lift time: its scheduler lifts both at start.
    clock = OffsetClock()
    clock.jump_to(lift_at + timedelta(seconds=42))
    with RelayThread(home.settings, clock=clock, dispatch=False) as relay:
        assert relay.relay is not None and relay.relay.metrics is not None
        port = relay.relay.metrics.port
        wait_for(lambda: _lifted(home) == 2, "the scheduler's lifts")
        samples = scrape(port)
        assert value(samples, "relay_lift_lateness_seconds_count") == 2
        total = value(samples, "relay_lift_lateness_seconds_sum")
        assert total is not None and 2 * 42 <= total < 2 * 60
        assert value(samples, "relay_lift_lateness_seconds_bucket", le="30.0") == 0
        assert value(samples, "relay_lift_lateness_seconds_bucket", le="60.0") == 2
        assert value(samples, "relay_lift_lateness_seconds_bucket", le="+Inf") == 2

        # An administrator's early lift is no lateness of the scheduler's.
        advisory_admin.create_advisory(
            home.db, home.spool, home.settings, "ADV-2026-0103", "Another", None, "cli:test"
        )
        relay.lift("ADV-2026-0103")
        assert value(scrape(port), "relay_lift_lateness_seconds_count") == 2

        assert value(samples, "relay_bounces") == 0
        assert value(samples, "relay_leak_reports", kind="reported-by-admin") == 0
        incidents.report_by_admin(
            home.db,
            home.spool,
            home.crypto,
            home.settings,
            advisory_id="ADV-2026-0101",
            member_address="security@distro0.example",
            recipients=["someone@elsewhere.example"],
            note="forwarded to a mailing list",
            actor="cli:test",
        )
        # How a hard bounce settles its copy.
        with home.db.transaction() as s:
            first = s.query(Delivery.id).order_by(Delivery.id).limit(1).scalar_subquery()
            s.execute(
                update(Delivery)
                .where(Delivery.id == first)
                .values(status=DeliveryStatus.FAILED, failure_reason=BOUNCED)
            )
        samples = scrape(port)
    assert value(samples, "relay_leak_reports", kind="reported-by-admin") == 1
    assert value(samples, "relay_leak_reports", kind="content-match") == 0
    assert value(samples, "relay_bounces") == 1
    assert value(samples, "relay_deliveries", state="failed") == 1


def _lifted(home: RelayHome) -> int:
    with home.db.transaction() as s:
        return s.query(Advisory).filter(Advisory.state == AdvisoryState.LIFTED).count()


def _unreachable_database(tmp_path: Path) -> str:
    """A database that cannot answer: a SQLite file that is not one, or a PostgreSQL
    database that does not exist on the test server."""
    if databases.on_postgresql():
        return databases.url_of(f"{databases.PREFIX}never_created")
    path = tmp_path / "broken.db"
    path.write_bytes(b"this is not a database file" * 100)
    return f"sqlite:///{path}"


def test_a_database_that_fails_makes_database_up_0_not_a_failed_scrape(tmp_path: Path) -> None:
    db = Database(_unreachable_database(tmp_path))
    metrics = Metrics(MetricsSettings(enabled=True, port=0), db, lambda: datetime.now(UTC))
    metrics.start()
    try:
        samples = scrape(metrics.port)
    finally:
        metrics.stop()
        db.dispose()
    assert value(samples, "relay_database_up") == 0
    assert value(samples, "relay_smtp_accepted_total") == 0
    assert not any(name.startswith("relay_deliveries") for name, _ in samples)
    assert not any(name.startswith("relay_queue") for name, _ in samples)


@contextlib.contextmanager
def _locked(url: str) -> Iterator[None]:
    """The database locked by another connection, so a read waits: SQLite's file taken
    exclusively, or PostgreSQL's deliveries table."""
    if databases.on_postgresql():
        with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://")) as conn:
            conn.execute("LOCK TABLE deliveries IN ACCESS EXCLUSIVE MODE")
            yield
            conn.rollback()
        return
    lock = sqlite3.connect(url.removeprefix("sqlite:///"), isolation_level=None)
    try:
        lock.execute("PRAGMA locking_mode=EXCLUSIVE")
        lock.execute("BEGIN EXCLUSIVE")
        lock.execute("UPDATE alembic_version SET version_num = version_num")
        yield
        lock.execute("ROLLBACK")
    finally:
        lock.close()


def _database_up(registry: CollectorRegistry) -> float | None:
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        if family.name == "relay_database_up":
            return family.samples[0].value
    return None


def test_a_database_that_does_not_answer_in_time_is_down_until_it_answers(
    tmp_path: Path,
) -> None:
    settings = relay_config.load(write_config(tmp_path))
    db = migrated_database(tmp_path, settings)
    collector = DatabaseCollector(db, lambda: datetime.now(UTC), limit=0.5)
    registry = CollectorRegistry()
    registry.register(collector)
    try:
        assert _database_up(registry) == 1
        db.dispose()  # no pooled connection keeps the SQLite file from being locked
        with _locked(db.url):
            assert _database_up(registry) == 0
            # Again: a read still waiting is not joined by another one.
            assert _database_up(registry) == 0
        wait_for(lambda: _database_up(registry) == 1, "the database answering again")
    finally:
        collector.close()
        db.dispose()

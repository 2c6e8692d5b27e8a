"""The embargo scheduler on real SQLite: jobs in the relay's database, restarts, an
injected clock. Only one test waits for APScheduler to fire a job in real time (~2 s)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select, text

from relay.app import advisories
from relay.core import config as relay_config
from relay.core.database import Database
from relay.model import AdvisoryState, AuditEvent, Member, Message
from relay.policy.timing import NO_RULES
from relay.runners.scheduler import CHECK_JOB, JOB_TABLE, EmbargoScheduler
from relay.store.spool import Spool
from tests.support.relayhome import migrated_database, write_config

# Far enough ahead of the real clock that APScheduler fires nothing by itself.
BASE = datetime.now(UTC).replace(microsecond=0) + timedelta(days=30)


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def settings(tmp_path: Path) -> relay_config.Settings:
    return relay_config.load(write_config(tmp_path, extra='[embargo]\ncheck_interval = "1h"\n'))


@pytest.fixture
def db(tmp_path: Path, settings: relay_config.Settings) -> Database:
    database = migrated_database(tmp_path, settings)
    with database.transaction() as s:
        s.add(Member(address="m@distro.example", name="M"))
    return database


@pytest.fixture
def spool(db: Database) -> Spool:
    return Spool(db)


def create(db: Database, advisory_id: str, lift_at: datetime | None, now: datetime = BASE) -> None:
    with db.transaction() as s:
        advisories.create(s, advisory_id, "t", lift_at, "cli:t", NO_RULES, now)


def stored_jobs(db: Database) -> dict[str, datetime]:
    """The job rows as the next process will find them."""
    with db.engine.connect() as conn:
        rows = conn.execute(text(f"SELECT id, next_run_time FROM {JOB_TABLE}")).all()
    return {job_id: datetime.fromtimestamp(ts, UTC) for job_id, ts in rows}


def state(db: Database, advisory_id: str) -> str:
    with db.transaction() as s:
        return advisories.get(s, advisory_id).state


def run(body: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(body())


async def stop(scheduler: EmbargoScheduler) -> None:
    scheduler.shutdown()
    await asyncio.sleep(0)  # APScheduler shuts down on the loop's next turn
    assert not scheduler.running


def test_jobs_live_in_the_relay_database_and_survive_a_restart(db, spool, settings):
    lift_at = BASE + timedelta(days=10)
    create(db, "CVE-2026-1", lift_at)

    async def first_run() -> None:
        scheduler = EmbargoScheduler(db, spool, settings, clock=Clock(BASE))
        scheduler.start()
        await stop(scheduler)

    run(first_run)
    jobs = stored_jobs(db)
    assert jobs["lift:CVE-2026-1"] == lift_at
    assert jobs["remind:CVE-2026-1:48h"] == lift_at - timedelta(hours=48)
    assert jobs["remind:CVE-2026-1:1h"] == lift_at - timedelta(hours=1)
    assert CHECK_JOB in jobs

    async def second_run() -> None:  # a new process on the same database
        scheduler = EmbargoScheduler(db, spool, settings, clock=Clock(BASE + timedelta(days=1)))
        scheduler.start()
        assert {job.id for job in scheduler._scheduler.get_jobs()} >= {"lift:CVE-2026-1"}
        await stop(scheduler)

    run(second_run)
    assert stored_jobs(db)["lift:CVE-2026-1"] == lift_at
    assert state(db, "CVE-2026-1") == AdvisoryState.EMBARGOED


def test_a_lift_missed_while_the_relay_was_down_fires_once_at_start(db, spool, settings):
    lift_at = BASE + timedelta(days=5)  # no reminder is due yet when the relay stops
    create(db, "CVE-2026-2", lift_at)

    async def before() -> None:
        scheduler = EmbargoScheduler(db, spool, settings, clock=Clock(BASE))
        scheduler.start()
        await stop(scheduler)

    run(before)
    assert "lift:CVE-2026-2" in stored_jobs(db)
    woken: list[str] = []

    async def after_downtime() -> None:
        clock = Clock(lift_at + timedelta(hours=5))
        scheduler = EmbargoScheduler(
            db, spool, settings, clock=clock, on_queued=lambda: woken.append("wake")
        )
        scheduler.start()
        assert state(db, "CVE-2026-2") == AdvisoryState.LIFTED
        assert woken == ["wake"]
        scheduler.tick()  # once more: nothing left to do
        await stop(scheduler)

    run(after_downtime)
    assert not any(job_id.endswith("CVE-2026-2") for job_id in stored_jobs(db))
    with db.transaction() as s:
        lifted = s.execute(
            select(func.count()).where(AuditEvent.action == "advisory.lifted")
        ).scalar_one()
        notices = s.execute(
            select(func.count()).where(Message.advisory_id == "CVE-2026-2")
        ).scalar_one()
    assert (lifted, notices) == (1, 1)


def test_moving_a_lift_replaces_its_jobs(db, spool, settings):
    first, moved = BASE + timedelta(days=10), BASE + timedelta(days=12)
    create(db, "CVE-2026-3", first)

    async def body() -> None:
        clock = Clock(BASE)
        scheduler = EmbargoScheduler(db, spool, settings, clock=clock)
        scheduler.start()
        with db.transaction() as s:
            advisories.schedule(s, "CVE-2026-3", moved, "cli:t", "respin", NO_RULES, BASE)
        scheduler.reschedule("CVE-2026-3", moved)
        jobs = stored_jobs(db)
        assert jobs["lift:CVE-2026-3"] == moved
        assert jobs["remind:CVE-2026-3:48h"] == moved - timedelta(hours=48)
        # Moved closer than the 48h reminder: that job goes, the 1h one stays.
        clock.now = moved - timedelta(hours=30)
        scheduler.reschedule("CVE-2026-3", moved)
        assert sorted(j for j in stored_jobs(db) if "CVE-2026-3" in j) == [
            "lift:CVE-2026-3",
            "remind:CVE-2026-3:1h",
        ]
        scheduler.remove("CVE-2026-3")
        assert not [j for j in stored_jobs(db) if "CVE-2026-3" in j]
        await stop(scheduler)

    run(body)


def test_sync_follows_changes_made_by_another_process(db, spool, settings):
    create(db, "CVE-2026-4", BASE + timedelta(days=10))
    create(db, "CVE-2026-5", BASE + timedelta(days=10))

    async def body() -> None:
        scheduler = EmbargoScheduler(db, spool, settings, clock=Clock(BASE))
        scheduler.start()
        later = BASE + timedelta(days=11)
        with db.transaction() as s:  # what the CLI does while the relay runs
            advisories.schedule(s, "CVE-2026-4", later, "cli:t", None, NO_RULES, BASE)
            advisories.cancel(s, "CVE-2026-5", "cli:t", None)
            advisories.create(s, "CVE-2026-6", "t", later, "cli:t", NO_RULES, BASE)
        scheduler.sync()
        jobs = stored_jobs(db)
        assert jobs["lift:CVE-2026-4"] == later
        assert jobs["lift:CVE-2026-6"] == later
        assert not [j for j in jobs if "CVE-2026-5" in j]
        await stop(scheduler)

    run(body)


def test_only_one_scheduler_runs_per_process(db, spool, settings):
    async def body() -> None:
        first = EmbargoScheduler(db, spool, settings, clock=Clock(BASE))
        first.start()
        with pytest.raises(RuntimeError, match="another embargo scheduler"):
            EmbargoScheduler(db, spool, settings, clock=Clock(BASE)).start()
        await stop(first)

    run(body)


def test_apscheduler_fires_a_due_lift_job(db, spool, settings):
    """The one real-time test: a lift a moment ahead, fired by APScheduler itself."""

    async def body() -> None:
        lift_at = datetime.now(UTC) + timedelta(seconds=2)
        create(db, "CVE-2026-7", lift_at, now=datetime.now(UTC))
        fired = asyncio.Event()
        scheduler = EmbargoScheduler(db, spool, settings, on_queued=fired.set)
        scheduler.start()  # queues the reminders at once: the lift is within the hour
        assert "lift:CVE-2026-7" in stored_jobs(db)
        assert state(db, "CVE-2026-7") == AdvisoryState.EMBARGOED  # not the catch-up's doing
        while state(db, "CVE-2026-7") != AdvisoryState.LIFTED:
            await asyncio.wait_for(fired.wait(), timeout=15)
            fired.clear()
        await stop(scheduler)

    run(body)
    assert state(db, "CVE-2026-7") == AdvisoryState.LIFTED

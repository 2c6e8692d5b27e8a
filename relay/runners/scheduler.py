"""When the embargo work runs: APScheduler jobs kept in the relay's own database.

The database is the source of truth, not the jobs. A job only says "look now":
it calls `tick()`, which lifts what is due and sends due reminders by the
injected clock, each exactly once (relay/app/embargo.py, relay/app/reminders.py).
So a job that fires late, twice, or after a restart does no harm, and one that is
missing only delays work until the next check. Jobs live in the `apscheduler_jobs`
table next to the queue, so they survive restarts; `misfire_grace_time=None` and
`coalesce=True` make a job that fell due while the relay was down run once at the next start
(APScheduler's default grace of one second would drop it).

Jobs per advisory: `lift:<ID>` at the lift time and `remind:<ID>:<offset>` before
it; one `embargo:check` job re-reads the database every `[embargo]
check_interval` (changes made by another process, missing-lift warnings,
contributing-back reminders, and once a day the members' key health check). Job
functions are referenced by name ("relay.runners.scheduler:run_due"), as a persistent
store requires, and reach the running relay through a registry set by `start()`.

Only one scheduler runs per database, on the node that holds the scheduler's lease
(relay/runners/node.py): two schedulers on one job store would fire each job twice. The
work would still happen once, since every lift and reminder is a conditional change.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from apscheduler.jobstores.base import JobLookupError
from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from sqlalchemy import select

from relay.app import contributions, embargo, keyhealth, reminders
from relay.core.config import Settings
from relay.core.crypto import Crypto
from relay.core.database import Database
from relay.core.logs import event
from relay.model import Advisory, AdvisoryState, utcnow
from relay.store.spool import Spool

log = logging.getLogger("relay.scheduler")

JOB_TABLE = "apscheduler_jobs"
CHECK_JOB = "embargo:check"
KEY_CHECK_EVERY = timedelta(days=1)  # key expiry reminders, revocations
_RUN_DUE = "relay.runners.scheduler:run_due"


class _Registry:
    """The running scheduler of this process, for jobs loaded from the store by name."""

    current: EmbargoScheduler | None = None


def run_due(reason: str = "") -> None:
    """Job function: run due embargo work on the running relay."""
    scheduler = _Registry.current
    if scheduler is None:
        log.warning("embargo job %r fired with no running scheduler; ignored", reason)
        return
    scheduler.tick()


def lift_job_id(advisory_id: str) -> str:
    return f"lift:{advisory_id}"


def reminder_job_id(advisory_id: str, offset: timedelta) -> str:
    return f"remind:{advisory_id}:{reminders.label(offset)}"


class EmbargoScheduler:
    """Places the embargo jobs and runs the due work; one per database."""

    def __init__(
        self,
        db: Database,
        spool: Spool,
        settings: Settings,
        clock: Callable[[], datetime] = utcnow,
        on_queued: Callable[[], None] | None = None,
        crypto: Crypto | None = None,
    ) -> None:
        self.db = db
        self.spool = spool
        self.settings = settings
        self.clock = clock
        self.on_queued = on_queued
        self.crypto = crypto  # for the daily key health check; None: no key checks
        self._keys_checked_at: datetime | None = None
        self._tick_lock = threading.Lock()
        self.missed = False  # the last tick failed
        self._loop: asyncio.AbstractEventLoop | None = None
        self._scheduler = AsyncIOScheduler(
            jobstores={"default": SQLAlchemyJobStore(engine=db.engine, tablename=JOB_TABLE)},
            job_defaults={"misfire_grace_time": None, "coalesce": True, "max_instances": 1},
            timezone=UTC,
        )

    # Life cycle

    def start(self, *, catch_up: bool = True) -> None:
        """Start on the running event loop. First runs what fell due while the relay was
        down (blocking, short: a few queries), then places the jobs from the database."""
        if _Registry.current is not None and _Registry.current is not self:
            raise RuntimeError("another embargo scheduler is running in this process")
        self._loop = asyncio.get_running_loop()
        _Registry.current = self
        if catch_up:
            self.tick()
        self._scheduler.start()
        interval = self.settings.embargo.check_interval
        self._scheduler.add_job(
            _RUN_DUE,
            "interval",
            seconds=interval.total_seconds(),
            args=["check"],
            id=CHECK_JOB,
            replace_existing=True,
        )
        self.sync()

    async def take_over(self) -> None:
        """`start`, with what fell due run first in a worker thread: it may be many lifts,
        or wait on a locked database, and the edge and the dispatcher share this loop."""
        self._loop = asyncio.get_running_loop()
        await asyncio.to_thread(self.tick)
        self.start(catch_up=False)

    def shutdown(self) -> None:
        """Stop placing and running jobs; the jobs stay in the database for the next start."""
        if self._scheduler.running:
            self._scheduler.shutdown(wait=False)
        if _Registry.current is self:
            _Registry.current = None

    @property
    def running(self) -> bool:
        return self._scheduler.running

    # Placing jobs

    def reschedule(self, advisory_id: str, lift_at: datetime | None) -> None:
        """(Re)place one advisory's jobs: its old ones go, new ones follow `lift_at`.

        Only on the node that leads: another node's change is picked up by the leader's
        `sync` at its next heartbeat."""
        if not self._scheduler.running:
            return
        self.remove(advisory_id)
        now = self.clock()
        if lift_at is None or lift_at <= now:
            # Unset: the check job raises the missing-lift warning. Due already: `tick`
            # lifts it; a job in the past would only fire again and again.
            return
        self._add(lift_job_id(advisory_id), lift_at, f"lift {advisory_id}")
        for offset in self.settings.embargo.reminders:
            if lift_at - offset > now:
                self._add(
                    reminder_job_id(advisory_id, offset),
                    lift_at - offset,
                    f"remind {advisory_id}",
                )

    def remove(self, advisory_id: str) -> None:
        """Drop every job of one advisory (lifted, cancelled, or about to be replaced)."""
        for job in self._scheduler.get_jobs():
            if job.id == lift_job_id(advisory_id) or job.id.startswith(f"remind:{advisory_id}:"):
                with contextlib.suppress(JobLookupError):  # gone meanwhile
                    self._scheduler.remove_job(job.id)

    def sync(self) -> None:
        """Make the jobs match the database: embargoed advisories with a lift time have
        theirs, nothing else does. Jobs already right are left alone."""
        with self.db.transaction() as session:
            wanted = dict(
                session.execute(
                    select(Advisory.id, Advisory.lift_at).where(
                        Advisory.state == AdvisoryState.EMBARGOED, Advisory.lift_at.is_not(None)
                    )
                ).all()
            )
        placed: dict[str, dict[str, datetime | None]] = {}
        for job in self._scheduler.get_jobs():
            kind, _, rest = job.id.partition(":")
            if kind in ("lift", "remind"):
                advisory_id = rest if kind == "lift" else rest.rpartition(":")[0]
                placed.setdefault(advisory_id, {})[job.id] = job.next_run_time
        for advisory_id in placed.keys() - wanted.keys():
            self.remove(advisory_id)
        for advisory_id, lift_at in wanted.items():
            if placed.get(advisory_id, {}).get(lift_job_id(advisory_id)) != lift_at:
                self.reschedule(advisory_id, lift_at)

    def _add(self, job_id: str, run_at: datetime, reason: str) -> None:
        self._scheduler.add_job(
            _RUN_DUE,
            "date",
            run_date=run_at,
            args=[reason],
            id=job_id,
            replace_existing=True,
        )

    # Running

    def tick(self) -> None:
        """Lift and remind whatever is due now by the injected clock, then tidy the jobs.

        Safe from any thread; runs are serialised in this process. A tick that fails (the
        database is locked or gone) leaves `missed` set, and the node runs it again at its
        next heartbeat, so a lift due during the fault happens as soon as it is over."""
        try:
            self._tick()
        except Exception:
            self.missed = True
            raise
        self.missed = False

    def _tick(self) -> None:
        with self._tick_lock:
            now = self.clock()
            lifted = embargo.lift_due(self.db, self.spool, self.settings, now)
            reminded = reminders.send_due_reminders(self.db, self.spool, self.settings, now)
            reminded += contributions.send_status_reminders(self.db, self.spool, self.settings, now)
            if self.crypto is not None and (
                self._keys_checked_at is None or now - self._keys_checked_at >= KEY_CHECK_EVERY
            ):
                report = keyhealth.check_keys(self.db, self.spool, self.crypto, self.settings, now)
                self._keys_checked_at = now
                reminded += list(report.reminded)
            if self._scheduler.running:
                for advisory_id in lifted:
                    self.remove(advisory_id)
                self.sync()
        if lifted or reminded:
            event(log, "embargo work", lifted=len(lifted), reminders=len(reminded))
            self._queued()

    def _queued(self) -> None:
        """Tell the dispatcher, on the event loop's thread, that notices are waiting."""
        if self.on_queued is None:
            return
        loop = self._loop
        if loop is None or loop.is_closed():
            self.on_queued()
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            self.on_queued()
        else:
            loop.call_soon_threadsafe(self.on_queued)

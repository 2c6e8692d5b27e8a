"""The dispatcher (Postfix's qmgr): claims due deliveries and sees each one through.

For each claimed delivery, relay/outbound/preparation.py reads the job (the gate's answer
included), decides what becomes of it and makes its copy; the dispatcher runs those steps,
hands the copy to the transport and records the outcome. A copy the gate stops is held
until the lift and the leak reported; a recipient without a usable key is held (never
plaintext) and the security contact is told; `4xx` and connection errors are deferred on
the backoff schedule; `5xx` fails at once.

Three kinds of concurrency, each sized on its own: `workers` crypto workers sign and
encrypt (one per core, each a process of its own: relay/runners/crypto_workers.py),
`connections` tasks talk SMTP so sending overlaps
encryption, and one recorder commits outcomes in batches so the disk syncs once per batch,
not once per copy. Each copy is signed and encrypted in one call, since each carries its
own reference.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from relay.app import advisories
from relay.core import verp
from relay.core.config import Settings
from relay.core.crypto import Crypto, KeyInfo
from relay.core.database import Database
from relay.core.errors import CryptoError
from relay.core.logs import event
from relay.leaks.index import EmbargoedText
from relay.model import (
    Delivery,
    DeliveryStatus,
    FailureReason,
    MessageKind,
    utcnow,
)
from relay.outbound import gate, preparation
from relay.outbound.preparation import Job
from relay.outbound.transport import Outcome, SendResult, Transport, transports_for
from relay.policy import forwarding
from relay.runners.crypto_workers import CryptoWorkers
from relay.runners.supervision import Backoff, Health, pause_or_stop
from relay.store import delivery_queue, notices
from relay.store.key_owners import list_key
from relay.store.spool import Spool

log = logging.getLogger("relay.dispatch")

CLAIM_BATCH = 64
# The next batch is claimed while this many copies of the last are still queued, so the crypto
# workers never wait for the claim (~15 ms for 64 copies) between batches.
REFILL_AT = CLAIM_BATCH // 2
RECORD_BATCH = 128
RECORD_LINGER = 0.05  # seconds
BACKOFF = Backoff(first=0.5, longest=10.0)  # after a claim or record that failed


@dataclass(frozen=True)
class Ready:
    """A sealed copy, waiting for an SMTP session."""

    data: bytes
    keys: list[str]


WorkItem = tuple[Job, "asyncio.Task[Ready | delivery_queue.Attempt | None]"]


class Dispatcher:
    def __init__(
        self,
        settings: Settings,
        db: Database,
        spool: Spool,
        crypto: Crypto,
        *,
        transport_factory: Callable[[], Transport] | None = None,
        clock: Callable[[], datetime] = utcnow,
        watch: EmbargoedText | None = None,
        node: str = "",
        health: Health | None = None,
    ) -> None:
        self.settings = settings
        self.node = node
        self.health = health or Health()
        # For `relay status`: when this node last claimed copies and last delivered one.
        self.last_claim_at: datetime | None = None
        self.last_delivery_at: datetime | None = None
        self._stopping = False
        self._drained = False  # the last claim took all that was due
        self._announced = 0  # calls of `wake`: new work, which a claim under way may miss
        self.db = db
        self.spool = spool
        self.crypto = crypto
        self.clock = clock
        hostname = settings.smtp.hostname or settings.list.domain
        # Built now: a missing password or CA file stops the relay at start.
        self._transport_factory = transport_factory or transports_for(settings.delivery, hostname)
        self._list_fpr = list_key(crypto).fingerprint
        self._wake = asyncio.Event()
        self._keys: dict[str, KeyInfo] = {}
        self._payloads = preparation.Payloads(spool)
        self._inflight: dict[int, Job] = {}  # sent, outcome not yet recorded (for the log)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._workers = CryptoWorkers(crypto, settings.delivery.workers)
        d = settings.delivery
        self._retry = delivery_queue.Retry(
            d.min_backoff, d.max_backoff, d.queue_lifetime, d.max_errors
        )
        self._policy = advisories.policy_for(settings)
        self._ask_gate = preparation.gate_question(
            gate.Gate(
                settings,
                watch or EmbargoedText(spool),
                forwarding.load_forwarding(settings.embargo.policy),
            ),
            self._payloads,
        )

    def wake(self) -> None:
        """New work arrived (called from the event loop thread)."""
        self._drained = False
        self._announced += 1
        self._wake.set()

    # The loops

    async def run(self, stop: asyncio.Event) -> None:
        """Claim and deliver until `stop` is set; unstarted claims go back to the delivery_queue."""
        self._loop = asyncio.get_running_loop()
        self._stopping = False
        # Started now, so the first copies do not wait for worker processes to start.
        self._workers.start()
        work: asyncio.Queue[WorkItem] = asyncio.Queue()
        outcomes: asyncio.Queue[delivery_queue.Attempt | None] = asyncio.Queue()
        recorder = asyncio.create_task(self._recorder(outcomes), name="delivery-recorder")
        senders = [
            asyncio.create_task(self._sender(work, outcomes), name=f"delivery-sender-{n}")
            for n in range(self.settings.delivery.connections)
        ]
        poll = self.settings.delivery.poll_interval.total_seconds()
        failures = 0
        try:
            while not stop.is_set():
                self._wake.clear()
                if work.qsize() <= REFILL_AT:
                    announced = self._announced
                    try:
                        jobs = await self._claim()
                    except Exception as error:
                        # The database is locked or gone: wait and claim again; what was
                        # claimed stays leased to this node until it comes back.
                        failures += 1
                        self.health.failed("claim", error)
                        pause = BACKOFF.pause(failures)
                        log.exception("claim failed (%d in a row); next in %.1f s", failures, pause)
                        await pause_or_stop(stop, pause)
                        continue
                    if failures:
                        event(log, "recovered", task="claim", after_failures=failures)
                        self.health.recovered("claim")
                        failures = 0
                    for job in jobs:
                        work.put_nowait(self._start(job))
                    self._drained = len(jobs) < CLAIM_BATCH and self._announced == announced
                    if self._drained:
                        # This claim took all that was due: the refill calls of the copies
                        # sent meanwhile are answered.
                        self._wake.clear()
                    elif work.qsize() <= REFILL_AT:
                        continue
                stopping = asyncio.create_task(stop.wait())
                woken = asyncio.create_task(self._wake.wait())
                await asyncio.wait(
                    {stopping, woken}, timeout=poll, return_when=asyncio.FIRST_COMPLETED
                )
                stopping.cancel()
                woken.cancel()
        finally:
            unstarted = []
            while not work.empty():
                job, prepared = work.get_nowait()
                prepared.cancel()
                unstarted.append(job.delivery_id)
                work.task_done()
            if unstarted:
                await asyncio.to_thread(delivery_queue.release, self.db, unstarted)
            # Let in-flight deliveries finish so their outcome is recorded.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(work.join(), timeout=30)
            for task in senders:
                task.cancel()
            await asyncio.gather(*senders, return_exceptions=True)
            self._stopping = True
            outcomes.put_nowait(None)
            await recorder
            await self._workers.aclose()

    async def run_once(self) -> int:
        """Deliver everything due now by the injected clock; return the attempts made."""
        self._loop = asyncio.get_running_loop()
        done = 0
        try:
            while jobs := await self._claim():
                work: asyncio.Queue[WorkItem] = asyncio.Queue()
                outcomes: asyncio.Queue[delivery_queue.Attempt | None] = asyncio.Queue()
                for job in jobs:
                    work.put_nowait(self._start(job))
                recorder = asyncio.create_task(self._recorder(outcomes))
                senders = [
                    asyncio.create_task(self._sender(work, outcomes))
                    for _ in range(self.settings.delivery.connections)
                ]
                await work.join()
                for task in senders:
                    task.cancel()
                await asyncio.gather(*senders, return_exceptions=True)
                outcomes.put_nowait(None)
                await recorder
                done += len(jobs)
        finally:
            await self._workers.aclose()
        return done

    async def _sender(
        self, work: asyncio.Queue[WorkItem], outcomes: asyncio.Queue[delivery_queue.Attempt | None]
    ) -> None:
        transport = self._transport_factory()
        try:
            while True:
                job, prepared = await work.get()
                try:
                    ready = await prepared
                    if isinstance(ready, Ready):
                        self._inflight[job.delivery_id] = job
                        result = await transport.send(
                            self._envelope_sender(job), job.recipient, ready.data
                        )
                        outcomes.put_nowait(_outcome(job.delivery_id, result, ready.keys))
                    elif ready is not None:
                        outcomes.put_nowait(ready)
                except SQLAlchemyError as error:
                    # The database failed while the copy was prepared (nothing was sent):
                    # not the copy's fault, so it goes back to the queue uncounted.
                    log.exception("delivery %s: the database failed; queued again", job.delivery_id)
                    self.health.failed("delivery", error)
                    outcomes.put_nowait(delivery_queue.Attempt.unprepared(job.delivery_id, error))
                except Exception as error:
                    # Recorded on the copy (count and reason): retried on the schedule and
                    # failed after `max_errors`, never leased again and again.
                    log.exception("delivery %s raised; recorded as an error", job.delivery_id)
                    self.health.failed("delivery", error)
                    outcomes.put_nowait(delivery_queue.Attempt.error(job.delivery_id, error))
                finally:
                    work.task_done()
                    # Not after a short claim: it took all that was due, and new work wakes
                    # the loop itself (or its poll finds it), so the last copies of a
                    # fan-out do not each set off a claim that finds nothing.
                    if work.qsize() <= REFILL_AT and not self._drained:
                        self._wake.set()
        finally:
            await transport.close()

    def _start(self, job: Job) -> WorkItem:
        return job, asyncio.create_task(self._prepare(job))

    async def _recorder(self, outcomes: asyncio.Queue[delivery_queue.Attempt | None]) -> None:
        """Commit outcomes in batches: whatever arrived while the last commit ran."""
        finished = False
        while not finished:
            batch = [await outcomes.get()]
            # Linger briefly so one commit (one disk sync) covers many copies.
            deadline = asyncio.get_running_loop().time() + RECORD_LINGER
            while len(batch) < RECORD_BATCH and None not in batch:
                timeout = deadline - asyncio.get_running_loop().time()
                if timeout <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(outcomes.get(), timeout))
                except TimeoutError:
                    break
            finished = None in batch
            ready = [o for o in batch if o is not None]
            if ready:
                sent, changed = await self._record(ready)
                if sent:
                    self.last_delivery_at = utcnow()
                for outcome in ready:
                    job = self._inflight.pop(outcome.delivery_id, None)
                    if job is not None and outcome.delivery_id in sent:
                        event(
                            log,
                            "sent",
                            id=job.delivery_id,
                            msg=job.message_id,
                            rcpt=job.recipient,
                            code=outcome.code,
                        )
                if changed:
                    try:
                        await asyncio.to_thread(self._after_record, changed)
                    except Exception as error:
                        # A notice not queued must not end the recorder: every later
                        # outcome would wait unrecorded while copies go on being sent.
                        self.health.failed("record", error)
                        log.exception("after recording %d outcomes", len(changed))

    async def _record(
        self, ready: list[delivery_queue.Attempt]
    ) -> tuple[list[int], list[Delivery]]:
        """Commit outcomes, trying again while the database is locked or gone: the copies
        stay leased meanwhile, and an outcome given up at a stop is sent again later."""
        failures = 0
        while True:
            try:
                recorded = await asyncio.to_thread(
                    delivery_queue.record_outcomes,
                    self.db,
                    ready,
                    now=self.clock(),
                    retry=self._retry,
                )
            except Exception as error:
                failures += 1
                self.health.failed("record", error)
                if self._stopping and failures >= 3:
                    # Stopping with the database gone: these copies stay leased and are
                    # sent again once their lease ends (at least once, never lost).
                    log.error("gave up recording %d outcomes at stop", len(ready))
                    return [], []
                pause = BACKOFF.pause(failures)
                log.exception("recording %d outcomes failed; next in %.1f s", len(ready), pause)
                await asyncio.sleep(pause)
                continue
            if failures:
                event(log, "recovered", task="record", after_failures=failures)
                self.health.recovered("record")
            return recorded

    async def _claim(self) -> list[Job]:
        now = self.clock()
        ids = await asyncio.to_thread(
            delivery_queue.claim_due,
            self.db,
            now,
            CLAIM_BATCH,
            self.settings.delivery.lease_for,
            self.node,
        )
        self.last_claim_at = utcnow()
        if not ids:
            return []
        try:
            return await asyncio.to_thread(self._load, ids)
        except Exception:
            # Claimed but not read: give them back rather than leave them leased for
            # `lease_for` (if the database is gone, the failover or our restart does).
            with contextlib.suppress(Exception):
                await asyncio.to_thread(delivery_queue.release, self.db, ids)
            raise

    def _load(self, ids: list[int]) -> list[Job]:
        self._keys = {k.fingerprint: k for k in self.crypto.list_keys()}
        jobs = preparation.load_jobs(self.db, ids, self.clock(), self._ask_gate)
        # Read here, off the event loop, what the copies will carry. A payload that cannot
        # be read fails its own copies when they are sealed, not the whole claim.
        for message_id in dict.fromkeys(job.message_id for job in jobs):
            with contextlib.suppress(Exception):
                self._payloads.get(message_id)
        return jobs

    def _envelope_sender(self, job: Job) -> str:
        """The copy's VERP address, so its bounce names its delivery (relay/core/verp.py)."""
        return verp.bounce_address(self.settings.list.address, job.bounce_token)

    async def _seal(self, job: Job, keys: list[str]) -> bytes:
        """The copy as sent: the plain notice without keys, else sealed by a crypto worker."""
        payload = self._payloads.kept(job.message_id)
        if payload is None:  # read in a thread: the spool is on disk, sealed
            payload = await asyncio.to_thread(self._payloads.get, job.message_id)
        if not keys:
            return await asyncio.to_thread(preparation.plain_notice, self.settings, job, payload)
        copy = preparation.build_copy(self.settings, self._policy.notice or None, job, payload)
        return await self._workers.run(preparation.sealed, copy, self._list_fpr, keys)

    # One delivery

    async def _prepare(self, job: Job) -> Ready | delivery_queue.Attempt | None:
        """Settle, hold or seal the job's copy (preparation.decide); runs ahead of sending, so
        the crypto workers always have the next copies queued while others are on the wire."""
        decision = preparation.decide(job, self._keys.get)
        if isinstance(decision, delivery_queue.Attempt):
            return decision
        if isinstance(decision, gate.Stopped):
            await asyncio.to_thread(self._hold_for_lift, job, decision)
            return None
        if isinstance(decision, preparation.Hold):
            await asyncio.to_thread(self._hold_unreachable, job, decision)
            return None
        try:
            data = await self._seal(job, decision.keys)
        except (CryptoError, ValueError) as exc:
            await asyncio.to_thread(self._hold_unreachable, job, preparation.unsealed(exc))
            return None
        event(
            log,
            "decided",
            # A sealed copy is the rule (its `sent` line follows); a plain notice is news.
            logging.DEBUG if decision.keys else logging.INFO,
            id=job.delivery_id,
            msg=job.message_id,
            rcpt=job.recipient,
            verdict="encrypt" if decision.keys else "plain-notice",
            keys=len(decision.keys),
        )
        return Ready(data, decision.keys)

    def _after_record(self, deliveries: list[Delivery]) -> None:
        """Log deferrals and failures; tell the security contact about copies given up."""
        for d in deliveries:
            fields: dict[str, Any] = dict(
                id=d.id, msg=d.message_id, rcpt=d.recipient, code=d.last_code
            )
            if d.status == DeliveryStatus.DEFERRED:
                event(log, "deferred", next_attempt=d.next_attempt_at.isoformat(), **fields)
            else:
                event(log, "failed", level=logging.WARNING, reason=d.last_reason, **fields)
                if d.member_id is not None:  # never a notice about a notice
                    self._notify(
                        "Delivery failed",
                        notices.failed_copy_text(d),
                        reason=f"delivery {d.id} failed",
                    )

    def _hold_for_lift(self, job: Job, stopped: gate.Stopped) -> None:
        with self.db.transaction() as session:
            gate.hold(session, self.spool, self.settings, job.delivery_id, stopped, self.clock())
        event(
            log,
            "held",
            level=logging.WARNING,
            id=job.delivery_id,
            msg=job.message_id,
            rcpt=job.recipient,
            until_lift_of=stopped.advisory_id,
            rule=stopped.decision.rule,
            verdict=stopped.decision.verdict,
        )
        if self._loop is not None:  # the leak report and the poster's notice are queued
            self._loop.call_soon_threadsafe(self.wake)

    def _hold_unreachable(self, job: Job, hold: preparation.Hold) -> None:
        with self.db.transaction() as session:
            delivery = session.get_one(Delivery, job.delivery_id)
            delivery_queue.hold(session, delivery, hold.reason, why=hold.why)
        event(
            log,
            "held",
            level=logging.WARNING,
            id=job.delivery_id,
            msg=job.message_id,
            rcpt=job.recipient,
            reason=hold.reason,
        )
        if job.kind == MessageKind.POST:
            self._notify(
                "Member unreachable",
                notices.unreachable_text(
                    job.recipient, job.message_id, job.delivery_id, hold.reason, hold.remedy
                ),
                reason=f"delivery {job.delivery_id} held",
            )

    def _notify(self, title: str, text: str, *, reason: str) -> None:
        lst = self.settings.list
        with self.db.transaction() as session:
            notices.enqueue_notice(
                session,
                self.spool,
                recipients=[lst.security_contact],
                subject=f"[{lst.name}] {title}",
                text=text,
                list_domain=lst.domain,
                reason=reason,
            )
        if self._loop is not None:  # called from a worker thread
            self._loop.call_soon_threadsafe(self.wake)


def _outcome(delivery_id: int, result: SendResult, keys: list[str]) -> delivery_queue.Attempt:
    kind = {Outcome.SENT: "sent", Outcome.TEMPORARY: "temporary"}.get(result.outcome, "permanent")
    unusable = FailureReason.UNUSABLE_ADDRESS if result.code == "addr" else None
    return delivery_queue.Attempt(
        delivery_id, kind, result.code, result.reason, tuple(keys), failure=unusable
    )

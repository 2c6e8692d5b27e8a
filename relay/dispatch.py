"""The dispatcher (Postfix's qmgr): picks due deliveries and sees each one through.

For each claimed delivery: resolve the recipient's usable keys, build its own
signed and encrypted copy, hand it to the transport, record the outcome. A
recipient without a usable key is held (never plaintext) and the security
contact is told; `4xx` and connection errors are deferred on the backoff
schedule; `5xx` fails at once. Workers run as asyncio tasks, each with its own
transport connection; OpenPGP work runs in threads (gpg is a subprocess).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import selectinload

from relay import compose, queue
from relay.config import Settings
from relay.crypto import Crypto, KeyInfo
from relay.db import Database
from relay.errors import CryptoError
from relay.keystore import list_key, sender_by_address
from relay.logs import event
from relay.models import Delivery, DeliveryStatus, MemberState, MessageKind, utcnow
from relay.spool import PAYLOAD, Spool
from relay.transport import Outcome, SendResult, Transport, make_transport

log = logging.getLogger("relay.dispatch")

CLAIM_BATCH = 64


@dataclass(frozen=True)
class Job:
    """A snapshot of one claimed delivery, read in one transaction."""

    delivery_id: int
    message_id: str
    kind: str
    recipient: str
    member_active: bool
    copy_message_id: str
    subject: str
    mail_from: str
    signer: str | None
    plaintext_allowed: bool
    fingerprints: tuple[str, ...]


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
    ) -> None:
        self.settings = settings
        self.db = db
        self.spool = spool
        self.crypto = crypto
        self.clock = clock
        hostname = settings.smtp.hostname or settings.list.domain
        self._transport_factory = transport_factory or (
            lambda: make_transport(settings.delivery, hostname)
        )
        self._list_fpr = list_key(crypto).fingerprint
        self._wake = asyncio.Event()
        self._payloads: OrderedDict[str, bytes] = OrderedDict()
        self._keys: dict[str, KeyInfo] = {}
        self._loop: asyncio.AbstractEventLoop | None = None

    def wake(self) -> None:
        """New work arrived (called from the event loop thread)."""
        self._wake.set()

    # The loop

    async def run(self, stop: asyncio.Event) -> None:
        """Claim and deliver until `stop` is set; unstarted claims go back to the queue."""
        self._loop = asyncio.get_running_loop()
        work: asyncio.Queue[Job] = asyncio.Queue()
        workers = [
            asyncio.create_task(self._worker(work), name=f"delivery-worker-{n}")
            for n in range(self.settings.delivery.workers)
        ]
        poll = self.settings.delivery.poll_interval.total_seconds()
        try:
            while not stop.is_set():
                self._wake.clear()
                if work.qsize() < self.settings.delivery.workers * 2:
                    jobs = await self._claim()
                    for job in jobs:
                        work.put_nowait(job)
                    if len(jobs) == CLAIM_BATCH:
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
                unstarted.append(work.get_nowait().delivery_id)
                work.task_done()
            if unstarted:
                await asyncio.to_thread(queue.release, self.db, unstarted)
            # Let in-flight deliveries finish so their outcome is recorded.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(work.join(), timeout=30)
            for task in workers:
                task.cancel()
            await asyncio.gather(*workers, return_exceptions=True)

    async def run_once(self) -> int:
        """Deliver everything due now, then return how many deliveries were attempted."""
        self._loop = asyncio.get_running_loop()
        done = 0
        transports = [self._transport_factory() for _ in range(self.settings.delivery.workers)]
        try:
            while jobs := await self._claim():
                pending = list(jobs)

                async def drain(transport: Transport, pending: list[Job] = pending) -> None:
                    while pending:
                        await self._deliver(pending.pop(0), transport)

                await asyncio.gather(*(drain(t) for t in transports))
                done += len(jobs)
        finally:
            for transport in transports:
                await transport.close()
        return done

    async def _worker(self, work: asyncio.Queue[Job]) -> None:
        transport = self._transport_factory()
        try:
            while True:
                job = await work.get()
                try:
                    await self._deliver(job, transport)
                except Exception:
                    log.exception(
                        "delivery %s crashed; it stays leased and is retried", job.delivery_id
                    )
                finally:
                    work.task_done()
                    if work.empty():
                        self._wake.set()
        finally:
            await transport.close()

    async def _claim(self) -> list[Job]:
        now = self.clock()
        ids = await asyncio.to_thread(
            queue.claim_due, self.db, now, CLAIM_BATCH, self.settings.delivery.lease_for
        )
        if not ids:
            return []
        return await asyncio.to_thread(self._load, ids)

    def _load(self, ids: list[int]) -> list[Job]:
        """Read the claimed deliveries and refresh the key cache (one gpg listing per batch)."""
        self._keys = {k.fingerprint: k for k in self.crypto.list_keys()}
        jobs = []
        with self.db.transaction() as session:
            rows = session.execute(
                select(Delivery)
                .where(Delivery.id.in_(ids))
                .options(selectinload(Delivery.message), selectinload(Delivery.member))
                .order_by(Delivery.id)
            ).scalars()
            for d in rows:
                if d.member is not None:
                    fingerprints = tuple(k.fingerprint for k in d.member.keys)
                    active = d.member.state == MemberState.ACTIVE
                else:
                    sender = sender_by_address(session, d.recipient)
                    fingerprints = tuple(k.fingerprint for k in sender.keys) if sender else ()
                    active = True
                jobs.append(
                    Job(
                        delivery_id=d.id,
                        message_id=d.message_id,
                        kind=d.message.kind,
                        recipient=d.recipient,
                        member_active=active,
                        copy_message_id=d.copy_message_id,
                        subject=d.message.subject,
                        mail_from=d.message.mail_from,
                        signer=d.message.signer_fingerprint,
                        plaintext_allowed=d.plaintext_allowed,
                        fingerprints=fingerprints,
                    )
                )
        return jobs

    # One delivery

    def _usable(self, fingerprints: tuple[str, ...]) -> tuple[list[str], str | None]:
        usable, problems = [], []
        for fpr in fingerprints:
            info = self._keys.get(fpr)
            problem = "key is missing from the keyring" if info is None else info.problem
            if problem is None:
                usable.append(fpr)
            else:
                problems.append(f"key {fpr[-16:]}: {problem}")
        return usable, (None if usable else "; ".join(problems) or "no key on file")

    def _payload(self, message_id: str) -> bytes:
        if message_id not in self._payloads:
            self._payloads[message_id] = self.spool.read(message_id, PAYLOAD)
            while len(self._payloads) > 32:
                self._payloads.popitem(last=False)
        return self._payloads[message_id]

    async def _deliver(self, job: Job, transport: Transport) -> None:
        if not job.member_active:
            await asyncio.to_thread(
                queue.fail, self.db, job.delivery_id, "cancelled", "member is no longer active"
            )
            return
        keys, problem = self._usable(job.fingerprints)
        if problem is not None and not job.plaintext_allowed:
            await asyncio.to_thread(self._hold_unreachable, job, f"no usable key: {problem}")
            return
        try:
            data = await asyncio.to_thread(self._build, job, keys)
        except CryptoError as exc:
            await asyncio.to_thread(self._hold_unreachable, job, f"encryption failed: {exc}")
            return
        result = await transport.send(self.settings.list.address, job.recipient, data)
        await asyncio.to_thread(self._record, job, result, keys)

    def _build(self, job: Job, keys: list[str]) -> bytes:
        lst = self.settings.list
        if not keys:  # only relay notices that quote nothing reach this point
            return compose.build_plain_notice(
                list_address=lst.address,
                list_id=lst.list_id_header,
                recipient=job.recipient,
                message_id=job.copy_message_id,
                subject=job.subject,
                text=self._payload(job.message_id).decode("utf-8", "replace"),
            )
        preface = None
        if job.kind == MessageKind.POST:
            preface = (
                f"Posted to {lst.address} by {job.mail_from or 'an authorised sender'}; "
                f"the relay verified the OpenPGP signature of key {job.signer}.\r\n"
            )
        copy = compose.Copy(
            list_address=lst.address,
            list_id=lst.list_id_header,
            recipient=job.recipient,
            message_id=job.copy_message_id,
            subject=job.subject,
            payload=self._payload(job.message_id),
            preface=preface,
        )
        return compose.build_encrypted(copy, self.crypto, self._list_fpr, keys)

    def _record(self, job: Job, result: SendResult, keys: list[str]) -> None:
        fields = dict(id=job.delivery_id, msg=job.message_id, rcpt=job.recipient, code=result.code)
        if result.outcome == Outcome.SENT:
            queue.mark_sent(self.db, job.delivery_id, result.code, result.reason, keys)
            event(log, "sent", **fields)
            return
        if result.outcome == Outcome.TEMPORARY:
            d = self.settings.delivery
            delivery = queue.defer(
                self.db,
                job.delivery_id,
                result.code,
                result.reason,
                now=self.clock(),
                min_backoff=d.min_backoff,
                max_backoff=d.max_backoff,
                lifetime=d.queue_lifetime,
            )
            if delivery.status == DeliveryStatus.DEFERRED:
                event(log, "deferred", next_attempt=delivery.next_attempt_at.isoformat(), **fields)
                return
        else:
            delivery = queue.fail(self.db, job.delivery_id, result.code, result.reason)
        event(log, "failed", level=logging.WARNING, reason=delivery.last_reason, **fields)
        if job.kind == MessageKind.POST:
            self._notify(
                "Delivery failed",
                f"The copy of message {job.message_id} for {job.recipient} could not be "
                f"delivered and was given up.\n\nCopy Message-ID: {job.copy_message_id}\n"
                f"Last error: {result.code} {delivery.last_reason}\n\n"
                f"Check the member's address, then run: relay queue retry {job.delivery_id}\n",
                reason=f"delivery {job.delivery_id} failed",
            )

    def _hold_unreachable(self, job: Job, reason: str) -> None:
        with self.db.transaction() as session:
            delivery = session.get_one(Delivery, job.delivery_id)
            queue.hold(session, delivery, reason)
        event(
            log,
            "held",
            level=logging.WARNING,
            id=job.delivery_id,
            msg=job.message_id,
            rcpt=job.recipient,
            reason=reason,
        )
        if job.kind == MessageKind.POST:
            self._notify(
                "Member unreachable",
                f"Member {job.recipient} could not be sent message {job.message_id}: {reason}.\n"
                f"Nothing was sent to it. The delivery is held (id {job.delivery_id}).\n\n"
                f"Import a usable key for the member, then run: "
                f"relay queue retry {job.delivery_id}\n",
                reason=f"delivery {job.delivery_id} held",
            )

    def _notify(self, title: str, text: str, *, reason: str) -> None:
        lst = self.settings.list
        with self.db.transaction() as session:
            queue.enqueue_notice(
                session,
                self.spool,
                recipients=[lst.security_contact],
                subject=f"[{lst.name}] {title}",
                text=text,
                list_domain=lst.domain,
                reason=reason,
            )
        if self._loop is not None:  # called from a worker thread
            self._loop.call_soon_threadsafe(self._wake.set)

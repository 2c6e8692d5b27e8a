"""What a claimed delivery becomes before it is sent: the job read from the database (every
copy that is not a member's copy of a list post put to the gate), then the decision
(withdrawn, held and why, held until the lift, or sealed), then the copy itself: signed
and encrypted to its recipient, or, for a keyless recipient a notice may reach in the
clear, the plain notice that quotes nothing. The dispatcher (relay/runners/dispatcher.py)
only schedules these steps and records what came of them.
"""

from __future__ import annotations

import email
import email.policy
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from relay.core.config import Settings
from relay.core.crypto import Crypto, KeyInfo
from relay.core.database import Database
from relay.core.errors import CryptoError
from relay.leaks.content import read_content
from relay.model import (
    Advisory,
    Delivery,
    GrantState,
    HoldReason,
    Member,
    MemberKey,
    MemberState,
    Message,
    MessageKind,
)
from relay.outbound import compose, gate, preface
from relay.store import delivery_queue, key_owners
from relay.store.key_owners import grant_for, sender_by_address
from relay.store.spool import PAYLOAD, Spool

log = logging.getLogger("relay.dispatch")  # these are the dispatcher's steps, logged as its own

# The gate's answer for one copy (delivery id, recipient, message id, its advisory, now):
# None, what stopped it, or why the gate could not answer.
AskGate = Callable[[Session, int, str, str, Advisory | None, datetime], "gate.Stopped | str | None"]


@dataclass(frozen=True)
class Job:
    """A snapshot of one claimed delivery, read in one transaction."""

    delivery_id: int
    message_id: str
    kind: str
    recipient: str
    member_active: bool
    copy_message_id: str
    reference: str
    bounce_token: str  # the copy's envelope sender is the list's VERP address with it
    subject: str
    poster: str  # the signing key's registered owner
    from_mismatch: str | None
    signer: str | None
    received_at: datetime
    plaintext_allowed: bool
    fingerprints: tuple[str, ...]
    to_member: bool  # a copy of a list-wide message (To: the list), not a one-off notice
    advisory: Advisory | None = None  # as loaded with the claim (detached snapshot)
    # The gate's reason to hold it until a lift, or why the gate could not answer.
    stopped: gate.Stopped | str | None = None


class Payloads:
    """Messages' payloads as read from the spool, the last few kept: every copy of a post
    and the gate's look at its content read the same bytes. Thread-safe (the event loop,
    the claim's worker thread and the crypto workers all read)."""

    def __init__(self, spool: Spool, keep: int = 32) -> None:
        self._spool = spool
        self._keep = keep
        self._read: OrderedDict[str, bytes] = OrderedDict()
        self._lock = threading.Lock()

    def kept(self, message_id: str) -> bytes | None:
        """The payload if it is kept already (no disk read: fit for the event loop)."""
        with self._lock:
            return self._read.get(message_id)

    def get(self, message_id: str) -> bytes:
        with self._lock:
            data = self._read.get(message_id)
            if data is None:
                data = self._read[message_id] = self._spool.read(message_id, PAYLOAD)
                while len(self._read) > self._keep:
                    self._read.popitem(last=False)
            return data


def gate_question(the_gate: gate.Gate, payloads: Payloads) -> AskGate:
    """The gate's answer for one copy; a failure to answer is a reason to hold it (the rest
    of the batch goes on)."""

    def ask(
        session: Session,
        delivery_id: int,
        recipient: str,
        message_id: str,
        advisory: Advisory | None,
        now: datetime,
    ) -> gate.Stopped | str | None:
        try:
            return the_gate.check(
                session,
                recipient=recipient,
                message_id=message_id,
                advisory=advisory,
                content=lambda: read_content(payloads.get(message_id)),
                now=now,
            )
        except Exception as exc:
            log.exception("forwarding check of delivery %s failed; it is held", delivery_id)
            return f"the forwarding check failed ({type(exc).__name__}); held to fail closed"

    return ask


def load_jobs(db: Database, ids: list[int], now: datetime, ask_gate: AskGate) -> list[Job]:
    """Read the claimed deliveries in a few plain queries (no ORM objects: hot path); every
    copy that is not a member's copy of a list post is put to the gate (`ask_gate`)."""
    d, m, mem = Delivery.__table__, Message.__table__, Member.__table__
    with db.transaction() as session:
        rows = session.execute(
            select(
                d.c.id,
                d.c.message_id,
                d.c.recipient,
                d.c.member_id,
                d.c.copy_message_id,
                d.c.reference,
                d.c.bounce_token,
                d.c.plaintext_allowed,
                m.c.kind,
                m.c.subject,
                m.c.poster,
                m.c.from_mismatch,
                m.c.signer_fingerprint,
                m.c.received_at,
                m.c.advisory_id,
                mem.c.state,
            )
            .select_from(
                d.join(m, m.c.id == d.c.message_id).outerjoin(mem, mem.c.id == d.c.member_id)
            )
            .where(d.c.id.in_(ids))
            .order_by(d.c.id)
        ).all()
        member_ids = {r.member_id for r in rows if r.member_id is not None}
        member_keys: dict[int, list[str]] = {}
        for member_id, fpr in session.execute(
            select(MemberKey.member_id, MemberKey.fingerprint).where(
                MemberKey.member_id.in_(member_ids)
            )
        ):
            member_keys.setdefault(member_id, []).append(fpr)
        advisory_ids = {r.advisory_id for r in rows if r.advisory_id is not None}
        found = session.execute(select(Advisory).where(Advisory.id.in_(advisory_ids)))
        by_id = {a.id: a for a in found.scalars()}
        jobs = []
        for r in rows:
            stopped = None
            if r.member_id is not None:
                fingerprints = tuple(member_keys.get(r.member_id, ()))
                active = r.state == MemberState.ACTIVE
            else:
                fingerprints, active = _other_keys(session, r.recipient, r.advisory_id, r.kind)
                # A member's copy of a list post needs no question: members read it all.
                stopped = ask_gate(
                    session, r.id, r.recipient, r.message_id, by_id.get(r.advisory_id), now
                )
            jobs.append(
                Job(
                    delivery_id=r.id,
                    message_id=r.message_id,
                    kind=r.kind,
                    recipient=r.recipient,
                    member_active=active,
                    copy_message_id=r.copy_message_id,
                    reference=r.reference,
                    bounce_token=r.bounce_token,
                    subject=r.subject,
                    poster=r.poster,
                    from_mismatch=r.from_mismatch,
                    signer=r.signer_fingerprint,
                    received_at=_utc(r.received_at),
                    plaintext_allowed=r.plaintext_allowed,
                    fingerprints=fingerprints,
                    to_member=r.member_id is not None,
                    advisory=by_id.get(r.advisory_id),
                    stopped=stopped,
                )
            )
    return jobs


@dataclass(frozen=True)
class Hold:
    """A copy that cannot be made for its recipient: why (the delivery's last reason and its
    hold reason), and what would let it be made, for the security contact's notice."""

    reason: str
    why: HoldReason
    remedy: str = "Import a usable key for the member"


@dataclass(frozen=True)
class Seal:
    """Make the copy: signed and encrypted to `keys`; none: the plain notice."""

    keys: list[str]


def decide(
    job: Job, key_info: Callable[[str], KeyInfo | None]
) -> delivery_queue.Attempt | Hold | gate.Stopped | Seal:
    """What becomes of a claimed copy before any gpg work: settled at once (its recipient
    may no longer have it), held, held until the lift (what the gate stopped), or sealed.
    A recipient without a usable key gets the plain notice only where plaintext is allowed;
    every other copy of it is held, never sent in the clear."""
    if not job.member_active:
        return delivery_queue.Attempt.withdrawn(job.delivery_id, to_member=job.to_member)
    if isinstance(job.stopped, str):
        return Hold(job.stopped, HoldReason.GATE_FAILED, "Look for the error in the relay's log")
    if job.stopped is not None:
        return job.stopped
    keys, problem = key_owners.usable(job.fingerprints, key_info)
    if problem is not None and not job.plaintext_allowed:
        return Hold(f"{delivery_queue.NO_KEY_HOLD}: {problem}", HoldReason.NO_KEY)
    return Seal(keys)


def sealed(crypto: Crypto, copy: compose.Copy, signer: str, keys: list[str]) -> bytes:
    """The copy as sent: signed by `signer` and encrypted to `keys` only. A crypto worker's
    task (relay/runners/crypto_workers.py), so the worker's keyring comes first. Raises
    CryptoError or ValueError (see `unsealed`)."""
    return compose.build_encrypted(copy, crypto, signer, keys)


def unsealed(exc: CryptoError | ValueError) -> Hold:
    """The hold of a copy `sealed` could not make: gpg failed, or compose refused the copy
    (a malformed field, say): fail closed."""
    if isinstance(exc, CryptoError):
        return Hold(f"encryption failed: {exc}", HoldReason.ENCRYPTION_FAILED)
    return Hold(f"copy not built: {exc}", HoldReason.COPY_NOT_BUILT)


def build_copy(settings: Settings, notice: str | None, job: Job, payload: bytes) -> compose.Copy:
    """The job's copy: its message, the embargo notice (`notice`: the list policy's words),
    and what makes it this copy."""
    lst = settings.list
    notes: list[str] = []
    extra: tuple[tuple[str, str], ...] = ()
    if job.advisory is not None and job.kind == MessageKind.POST:
        notes.append(
            preface.embargo_preface(job.advisory, notice, security_contact=lst.security_contact)
        )
        extra = preface.protected_fields(job.advisory)
    if job.kind == MessageKind.POST:
        notes += preface.poster_notes(lst.address, job.poster, job.signer, job.from_mismatch)
    notes.append(preface.copy_note(job.recipient, job.reference))
    return compose.Copy(
        list_address=lst.address,
        list_id=lst.list_id_header,
        to=lst.address if job.to_member else job.recipient,
        message_id=job.copy_message_id,
        subject=job.subject,
        payload=payload,
        preface="\n".join(notes),
        extra_protected=extra,
        reference=job.reference,
        date=job.received_at,
    )


def plain_notice(settings: Settings, job: Job, payload: bytes) -> bytes:
    """A notice that quotes nothing, for a recipient without a usable key."""
    lst = settings.list
    return compose.build_plain_notice(
        list_address=lst.address,
        list_id=lst.list_id_header,
        recipient=job.recipient,
        message_id=job.copy_message_id,
        subject=job.subject,
        text=_text_of(payload),
    )


def _other_keys(
    session: Session, recipient: str, advisory_id: str | None, kind: str
) -> tuple[tuple[str, ...], bool]:
    """Keys of a recipient who is not a member (a sender, or a person holding a grant for the
    advisory), and whether it may still receive the copy. A pending grant gets only its
    terms (a notice); a revoked grant gets nothing: its copies are cancelled."""
    sender = sender_by_address(session, recipient)
    if sender is not None:
        return tuple(k.fingerprint for k in sender.keys), True
    grant = grant_for(session, recipient, advisory_id) if advisory_id is not None else None
    if grant is None:
        return (), True
    entitled = grant.state == GrantState.ACCEPTED or (
        grant.state == GrantState.PENDING and kind == MessageKind.NOTICE
    )
    return tuple(grant.fingerprints), entitled


def _text_of(entity: bytes) -> str:
    """The decoded text of a notice's text/plain entity."""
    part = email.message_from_bytes(entity, policy=email.policy.default)
    return str(part.get_content())


def _utc(value: datetime) -> datetime:
    """Core queries skip the ORM's UTC type on some backends; make the zone explicit."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)

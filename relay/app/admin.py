"""Administrative use-cases: initialise the relay, manage members, senders and keys, read
the queue (advisories and the audit trail: relay/admin_advisories.py).

Each function takes its collaborators (database, crypto backend, settings) and an
actor, does the whole change in one transaction with its audit rows, and raises
`RelayError` with an administrator-readable message when it refuses. A refused
change leaves both the keyring and the database as they were. `relay.cli` is a
thin shell over these functions.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from pydantic import TypeAdapter
from sqlalchemy import func, select
from sqlalchemy.orm import Session, object_session

from relay.core.addresses import normalise_address
from relay.core.config import Address, Settings
from relay.core.crypto import MIN_RSA_BITS, Crypto, KeyInfo
from relay.core.database import Database
from relay.core.errors import KeyProblem, RelayError
from relay.core.gpg import GnuPG
from relay.core.logs import event
from relay.core.spool import Spool
from relay.model import (
    Delivery,
    DeliveryStatus,
    Incident,
    Member,
    MemberKey,
    MemberState,
    Sender,
    SenderKey,
    utcnow,
)
from relay.store import audit, delivery_queue, key_owners, recipients

log = logging.getLogger("relay.admin")

_ADDRESS = TypeAdapter(Address)


# Views returned to the CLI (and to scripts through --json)


@dataclass(frozen=True)
class InitReport:
    fingerprint: str
    key_created: bool


@dataclass(frozen=True)
class MemberView:
    address: str
    name: str
    state: str
    fingerprints: list[str]
    usable: bool
    problem: str | None
    created_at: datetime
    domains: list[str] = field(default_factory=list)
    criteria: dict[str, str] = field(default_factory=dict)
    vouched_by: str | None = None
    incidents: int = 0  # leaks recorded against the member (relay.incidents)

    @property
    def key_count(self) -> int:
        return len(self.fingerprints)


@dataclass(frozen=True)
class KeyImport:
    """Keys added to a member, and its deliveries that had waited for a usable key."""

    member: MemberView
    added: list[str]
    released: int


@dataclass(frozen=True)
class SenderView:
    address: str
    fingerprints: list[str]
    usable: bool
    problem: str | None
    created_at: datetime


@dataclass(frozen=True)
class KeyView:
    fingerprint: str
    owners: list[str]
    algorithm: str
    bits: int
    created_at: datetime
    expires_at: datetime | None
    status: str


@dataclass(frozen=True)
class DeliveryView:
    id: int
    message_id: str
    recipient: str
    status: str
    attempts: int
    next_attempt_at: datetime | None
    last_code: str | None
    last_reason: str | None


# Opening the relay's stores


def open_database(settings: Settings) -> Database:
    return Database(settings.storage.database_url)


def open_keyring(settings: Settings) -> GnuPG:
    return GnuPG(settings.gnupg.home, settings.gnupg.binary)


def require_schema(db: Database) -> None:
    """Refuse to work on a database that `relay init` has not brought up to date."""
    if not db.is_current():
        raise RelayError("the database is not initialised or not up to date; run 'relay init'")


def init_relay(settings: Settings, actor: str) -> InitReport:
    """Create what the relay needs; running it again changes nothing."""
    db = open_database(settings)
    try:
        db.upgrade()
        Spool(settings.storage.spool_dir)
        if settings.delivery.outbox is not None:
            settings.delivery.outbox.mkdir(parents=True, exist_ok=True)
        crypto = open_keyring(settings)
        try:
            return InitReport(key_owners.list_key(crypto).fingerprint, key_created=False)
        except KeyProblem:
            if any(k.secret for k in crypto.list_keys()):
                raise  # several secret keys: an administrator must sort that out
        fingerprint = crypto.generate_key(settings.list.name, settings.list.address)
        with db.transaction() as session:
            audit.record(
                session, actor, "list.initialised", settings.list.address, fingerprint=fingerprint
            )
        event(log, "list.initialised", address=settings.list.address, fingerprint=fingerprint)
        return InitReport(fingerprint, key_created=True)
    finally:
        db.dispose()


# Members


def _vet_keys(crypto: Crypto, data: bytes, *, need_encryption: bool) -> list[KeyInfo]:
    """The keys in `data` if every one of them is fit to use; refuse the whole file otherwise."""
    found = crypto.inspect_keys(data)
    if not found:
        raise KeyProblem("no OpenPGP public key found in the key file")
    if any(k.secret for k in found):
        raise KeyProblem("the key file holds a secret key; give the public key only")
    problems = [f"{k.fingerprint}: {p}" for k in found if (p := _problem(k, need_encryption))]
    if problems:
        raise KeyProblem("key refused, nothing changed: " + "; ".join(problems))
    own = {k.fingerprint for k in crypto.list_keys() if k.secret}
    if own & {k.fingerprint for k in found}:
        raise KeyProblem("that is the list's own key")
    return found


def _problem(key: KeyInfo, need_encryption: bool) -> str | None:
    if key.revoked:
        return "key is revoked"
    if key.expired:
        return "key has expired"
    if key.algorithm == "RSA" and key.bits < MIN_RSA_BITS:
        return f"RSA key of {key.bits} bits is too weak (at least {MIN_RSA_BITS} required)"
    if need_encryption:
        return key.problem
    return None


def _import(crypto: Crypto, data: bytes, found: list[KeyInfo], need_encryption: bool) -> list[str]:
    """Import vetted keys, then re-check them as merged with what the keyring already held."""
    fingerprints = crypto.import_keys(data)
    problems = []
    for fpr in fingerprints:
        merged = crypto.key_info(fpr)
        problem = "missing after import" if merged is None else _problem(merged, need_encryption)
        if problem:
            problems.append(f"{fpr}: {problem}")
    if problems:
        # The file was fine but the keyring's copy (say, already revoked) is not.
        raise KeyProblem(
            "key refused as merged with the relay's keyring; no member or sender changed: "
            + "; ".join(problems)
        )
    return fingerprints or [k.fingerprint for k in found]


def _refuse_member_keys(session: Session, fingerprints: Iterable[str]) -> None:
    """One key, one member: a shared key would let one member read another's copies."""
    query = select(MemberKey).where(MemberKey.fingerprint.in_(list(fingerprints)))
    if (taken := session.execute(query).scalars().first()) is not None:
        raise KeyProblem(
            f"key {taken.fingerprint} already belongs to member {taken.member.address}"
        )


def _refuse_sender_keys(session: Session, fingerprints: Iterable[str]) -> None:
    """One key, one sender: a signature must name exactly one sender."""
    query = select(SenderKey).where(SenderKey.fingerprint.in_(list(fingerprints)))
    if (taken := session.execute(query).scalars().first()) is not None:
        raise KeyProblem(
            f"key {taken.fingerprint} already belongs to sender {taken.sender.address}"
        )


def _member(session: Session, address: str) -> Member | None:
    return session.execute(select(Member).where(Member.address == address)).scalar_one_or_none()


def add_member(
    db: Database,
    crypto: Crypto,
    settings: Settings,
    address: str,
    name: str,
    key_data: bytes,
    actor: str,
) -> MemberView:
    """Add a member with one or more encryption keys (or bring back a removed member)."""
    address = normalise_address(address)
    name = name.strip()
    if not name:
        raise RelayError("a member needs a name (for example the distribution's name)")
    if address == settings.list.address:
        raise RelayError("that is the list's own address")
    found = _vet_keys(crypto, key_data, need_encryption=True)
    with db.transaction() as session:
        existing = _member(session, address)
        if existing is not None and existing.state != MemberState.REMOVED:
            raise RelayError(f"{address} is already a member ({existing.state})")
        mine = {k.fingerprint for k in existing.keys} if existing else set()
        others = [k.fingerprint for k in found if k.fingerprint not in mine]
        _refuse_member_keys(session, others)

    fingerprints = _import(crypto, key_data, found, need_encryption=True)
    with db.transaction() as session:
        member = _member(session, address)
        detail: dict[str, object] = {"name": name, "fingerprints": fingerprints}
        if member is None:
            member = Member(address=address, name=name, state=MemberState.ACTIVE)
            session.add(member)
        else:
            detail["old"] = {"name": member.name, "state": member.state}
            member.name, member.state = name, MemberState.ACTIVE
            member.keys.clear()  # a returning member brings their current keys
            session.flush()
        member.keys.extend(MemberKey(fingerprint=f) for f in fingerprints)
        audit.record(session, actor, "member.added", address, **detail)
        for fpr in fingerprints:
            audit.record(session, actor, "key.imported", fpr, owner=f"member {address}")
        view = _member_view(crypto, member)  # in the session: a returning member's incidents
    event(log, "member.added", address=address, keys=len(fingerprints))
    return view


def remove_member(db: Database, address: str, actor: str, reason: str | None = None) -> int:
    """Mark a member removed (the row stays for history) and stop their unsent deliveries."""
    address = normalise_address(address)
    with db.transaction() as session:
        member = _member(session, address)
        if member is None:
            raise RelayError(f"no member {address}")
        if member.state == MemberState.REMOVED:
            raise RelayError(f"{address} was already removed")
        old = member.state
        member.state = MemberState.REMOVED
        why = reason or "member removed"
        cancelled = recipients.cancel_member(session, member.id, actor, why)
        audit.record(
            session, actor, "member.removed", address, old=old, reason=why, cancelled=cancelled
        )
    event(log, "member.removed", address=address, cancelled=cancelled)
    return cancelled


def list_members(db: Database, crypto: Crypto, include_removed: bool = False) -> list[MemberView]:
    with db.transaction() as session:
        query = select(Member).order_by(Member.address)
        if not include_removed:
            query = query.where(Member.state != MemberState.REMOVED)
        counts: dict[int | None, int] = {
            member_id: n
            for member_id, n in session.execute(
                select(Incident.member_id, func.count()).group_by(Incident.member_id)
            )
        }
        return [
            _member_view(crypto, m, counts.get(m.id, 0)) for m in session.execute(query).scalars()
        ]


def _member_view(crypto: Crypto, member: Member, incidents: int | None = None) -> MemberView:
    """`incidents` when the caller counted them; otherwise counted in the member's session."""
    session = object_session(member)
    if incidents is None and member.id is not None and session is not None:
        query = select(func.count()).select_from(Incident).where(Incident.member_id == member.id)
        incidents = session.scalar(query) or 0
    fingerprints = [k.fingerprint for k in member.keys]
    usable, problem = key_owners.usable_keys(crypto, fingerprints)
    return MemberView(
        address=member.address,
        name=member.name,
        state=member.state,
        fingerprints=fingerprints,
        usable=bool(usable),
        problem=problem,
        created_at=member.created_at,
        domains=list(member.domains or []),
        criteria=dict(member.criteria or {}),
        vouched_by=member.vouched_by,
        incidents=incidents or 0,
    )


def add_member_keys(
    db: Database,
    crypto: Crypto,
    address: str,
    key_data: bytes,
    actor: str,
    now: datetime | None = None,
) -> KeyImport:
    """Add keys to an existing member, vetted like `add_member`'s. If the member had no
    usable key before, its deliveries held for want of one go back to the delivery_queue."""
    address = normalise_address(address)
    found = _vet_keys(crypto, key_data, need_encryption=True)
    with db.transaction() as session:
        member = _member(session, address)
        if member is None:
            raise RelayError(f"no member {address}")
        if member.state == MemberState.REMOVED:
            raise RelayError(f"{address} was removed; add it again with 'relay member add'")
        mine = {k.fingerprint for k in member.keys}
        new = [k.fingerprint for k in found if k.fingerprint not in mine]
        if not new:
            raise RelayError(f"{address} already has every key in the file")
        _refuse_member_keys(session, new)

    fingerprints = _import(crypto, key_data, found, need_encryption=True)
    with db.transaction() as session:
        member = _member(session, address)
        if member is None or member.state == MemberState.REMOVED:
            raise RelayError(f"{address} was removed meanwhile; no key was added")
        mine = {k.fingerprint for k in member.keys}
        added = [f for f in fingerprints if f not in mine]
        member.keys.extend(MemberKey(fingerprint=f) for f in added)
        for fpr in added:
            audit.record(session, actor, "key.imported", fpr, owner=f"member {address}")
        released = 0
        if member.state == MemberState.ACTIVE:
            released = recipients.release_key_holds(session, member.id, actor, now or utcnow())
        view = _member_view(crypto, member)
    event(log, "member.keys_added", address=address, keys=len(added), released=released)
    return KeyImport(view, added, released)


# Senders


def add_sender(
    db: Database, crypto: Crypto, settings: Settings, address: str, key_data: bytes, actor: str
) -> SenderView:
    """Authorise a sender (an SRC member or the security contact) by their signing key(s)."""
    address = normalise_address(address)
    if address == settings.list.address:
        raise RelayError("that is the list's own address")
    found = _vet_keys(crypto, key_data, need_encryption=False)
    with db.transaction() as session:
        if key_owners.sender_by_address(session, address) is not None:
            raise RelayError(f"{address} is already an authorised sender")
        _refuse_sender_keys(session, [k.fingerprint for k in found])

    fingerprints = _import(crypto, key_data, found, need_encryption=False)
    with db.transaction() as session:
        sender = Sender(address=address, keys=[SenderKey(fingerprint=f) for f in fingerprints])
        session.add(sender)
        audit.record(session, actor, "sender.added", address, fingerprints=fingerprints)
        for fpr in fingerprints:
            audit.record(session, actor, "key.imported", fpr, owner=f"sender {address}")
    event(log, "sender.added", address=address, keys=len(fingerprints))
    return _sender_view(crypto, sender)


def remove_sender(db: Database, address: str, actor: str) -> None:
    """Withdraw a sender's authorisation; later posts signed by their keys are refused."""
    address = normalise_address(address)
    with db.transaction() as session:
        sender = key_owners.sender_by_address(session, address)
        if sender is None:
            raise RelayError(f"no authorised sender {address}")
        fingerprints = [k.fingerprint for k in sender.keys]
        session.delete(sender)
        audit.record(session, actor, "sender.removed", address, fingerprints=fingerprints)
    event(log, "sender.removed", address=address)


def list_senders(db: Database, crypto: Crypto) -> list[SenderView]:
    with db.transaction() as session:
        senders = session.execute(select(Sender).order_by(Sender.address)).scalars()
        return [_sender_view(crypto, s) for s in senders]


def _sender_view(crypto: Crypto, sender: Sender) -> SenderView:
    fingerprints = [k.fingerprint for k in sender.keys]
    problems = []
    for fpr in fingerprints:
        info = crypto.key_info(fpr)
        problem = "key is missing from the keyring" if info is None else _problem(info, False)
        if problem:
            problems.append(f"{fpr[-16:]}: {problem}")
    usable = len(problems) < len(fingerprints)
    return SenderView(
        address=sender.address,
        fingerprints=fingerprints,
        usable=usable,
        problem=None if usable else "; ".join(problems) or "no key on file",
        created_at=sender.created_at,
    )


# Keys


def key_status(key: KeyInfo) -> str:
    if key.revoked:
        return "revoked"
    if key.expired:
        return "expired"
    if key.algorithm == "RSA" and key.bits < MIN_RSA_BITS:
        return "weak"
    if not key.can_encrypt:
        return "sign-only"
    return "usable"


def list_keys(db: Database, crypto: Crypto) -> list[KeyView]:
    """Every key in the relay's keyring with the parties that own it."""
    owners: dict[str, list[str]] = {}
    with db.transaction() as session:
        for mk in session.execute(select(MemberKey)).scalars():
            label = f"member {mk.member.address}"
            if mk.member.state != MemberState.ACTIVE:
                label += f" ({mk.member.state})"
            owners.setdefault(mk.fingerprint, []).append(label)
        for sk in session.execute(select(SenderKey)).scalars():
            owners.setdefault(sk.fingerprint, []).append(f"sender {sk.sender.address}")
    views = []
    for key in sorted(crypto.list_keys(), key=lambda k: (not k.secret, k.created_at)):
        labels = (["list"] if key.secret else []) + owners.get(key.fingerprint, [])
        views.append(
            KeyView(
                fingerprint=key.fingerprint,
                owners=labels,
                algorithm=key.algorithm,
                bits=key.bits,
                created_at=key.created_at,
                expires_at=key.expires_at,
                status=key_status(key),
            )
        )
    return views


def read_key_file(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise KeyProblem(f"cannot read key file {path}: {exc.strerror or exc}") from None


# Queue


_WAITING = (DeliveryStatus.QUEUED, DeliveryStatus.DEFERRED)
_SHOWN = (
    DeliveryStatus.QUEUED,
    DeliveryStatus.ACTIVE,
    DeliveryStatus.DEFERRED,
    DeliveryStatus.HELD,
    DeliveryStatus.FAILED,
)


def list_deliveries(db: Database, include_sent: bool = False) -> list[DeliveryView]:
    """Unsent deliveries (and, on request, sent ones), oldest first."""
    query = select(Delivery).order_by(Delivery.id)
    if not include_sent:
        query = query.where(Delivery.status.in_(_SHOWN))
    with db.transaction() as session:
        return [_delivery_view(d) for d in session.execute(query).scalars()]


def retry_delivery(db: Database, delivery_id: int, actor: str) -> DeliveryView:
    with db.transaction() as session:
        view = _delivery_view(delivery_queue.retry(session, delivery_id, actor))
    event(log, "delivery.retried", delivery=delivery_id)
    return view


def _delivery_view(d: Delivery) -> DeliveryView:
    return DeliveryView(
        id=d.id,
        message_id=d.message_id,
        recipient=d.recipient,
        status=d.status,
        attempts=d.attempts,
        next_attempt_at=d.next_attempt_at if d.status in _WAITING else None,
        last_code=d.last_code,
        last_reason=d.last_reason,
    )

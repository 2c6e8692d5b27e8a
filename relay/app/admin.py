"""Administrative use-cases: initialise the relay, manage senders, list the keyring, read
and retry the queue (members: relay/app/members.py and relay/app/membership.py;
advisories and the audit trail: relay/app/advisory_admin.py).

Each function takes its collaborators (database, crypto backend, settings) and an
actor, does the whole change in one transaction with its audit rows, and raises
`RelayError` with an administrator-readable message when it refuses. A refused
change leaves both the keyring and the database as they were. `relay.cli` is a
thin shell over these functions.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from sqlalchemy import inspect, select
from sqlalchemy.orm import Session

from relay.app.key_vetting import import_vetted, key_problem, key_status, vet_keys
from relay.core import keyrings
from relay.core.addresses import normalise_address
from relay.core.config import Settings
from relay.core.crypto import Crypto
from relay.core.database import Database
from relay.core.errors import KeyProblem, RelayError
from relay.core.logs import event
from relay.model import Delivery, DeliveryStatus, MemberKey, MemberState, Sender, SenderKey
from relay.store import at_rest, audit, data_keys, delivery_queue, key_owners, public_keys
from relay.store.spool import Spool

log = logging.getLogger("relay.admin")

# Views returned to the CLI (and to scripts through --json)


@dataclass(frozen=True)
class InitReport:
    fingerprint: str
    key_created: bool


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


def open_keyring(settings: Settings) -> Crypto:
    return keyrings.open_keyring(settings.gnupg)


def unseal(db: Database, crypto: Crypto) -> None:
    """Open the database's data keys with the list key, so sealed text reads and writes."""
    data_keys.unwrap(db, crypto)


def require_schema(db: Database) -> None:
    """Refuse to work on a database that `relay init` has not brought up to date."""
    if not db.is_current():
        raise RelayError("the database is not initialised or not up to date; run 'relay init'")


def init_relay(settings: Settings, actor: str) -> InitReport:
    """Create what the relay needs; running it again changes nothing."""
    db = open_database(settings)
    try:
        crypto = open_keyring(settings)
        # A migration may read sealed rows (0014 chains the audit trail as it reads): a
        # database that has data keys gets them opened first.
        if _has_data_keys(db):
            # Without the list key here, the checks below say what to do.
            with contextlib.suppress(RelayError):
                unseal(db, crypto)
        db.upgrade()
        if settings.delivery.outbox is not None:
            settings.delivery.outbox.mkdir(parents=True, exist_ok=True)
        try:
            report = InitReport(key_owners.list_key(crypto).fingerprint, key_created=False)
        except KeyProblem:
            if any(k.secret for k in crypto.list_keys()):
                raise  # several secret keys: an administrator must sort that out
            if data_keys.present(db):
                # Another node's database: a new key here could never open its data keys.
                raise RelayError(
                    "the database belongs to a relay whose list key is not in this keyring"
                    f" ({settings.gnupg.keyring_path}): bring it with 'relay node export-key' on a"
                    " running node and 'relay node import-key' here"
                ) from None
            fingerprint = crypto.generate_key(settings.list.name, settings.list.address)
            report = InitReport(fingerprint, key_created=True)
        # Embargoed text is sealed under a data key wrapped to the list key; the audit row
        # below is sealed too, so the key comes first.
        data_keys.ensure(db, crypto, report.fingerprint)
        unseal(db, crypto)
        at_rest.upgrade(db, Spool(db), settings.storage.spool_dir, crypto)
        if report.key_created:
            with db.transaction() as session:
                audit.record(
                    session,
                    actor,
                    "list.initialised",
                    settings.list.address,
                    fingerprint=report.fingerprint,
                )
            event(
                log,
                "list.initialised",
                address=settings.list.address,
                fingerprint=report.fingerprint,
            )
        return report
    finally:
        db.dispose()


def _has_data_keys(db: Database) -> bool:
    return inspect(db.engine).has_table("data_keys") and data_keys.present(db)


# Senders


def _refuse_sender_keys(session: Session, fingerprints: Iterable[str]) -> None:
    """One key, one sender: a signature must name exactly one sender."""
    query = select(SenderKey).where(SenderKey.fingerprint.in_(list(fingerprints)))
    if (taken := session.execute(query).scalars().first()) is not None:
        raise KeyProblem(
            f"key {taken.fingerprint} already belongs to sender {taken.sender.address}"
        )


def add_sender(
    db: Database, crypto: Crypto, settings: Settings, address: str, key_data: bytes, actor: str
) -> SenderView:
    """Authorise a sender (an SRC member or the security contact) by their signing key(s)."""
    address = normalise_address(address)
    if address == settings.list.address:
        raise RelayError("that is the list's own address")
    found = vet_keys(crypto, key_data, need_encryption=False)
    with db.transaction() as session:
        if key_owners.sender_by_address(session, address) is not None:
            raise RelayError(f"{address} is already an authorised sender")
        _refuse_sender_keys(session, [k.fingerprint for k in found])

    fingerprints = import_vetted(crypto, key_data, found, need_encryption=False)
    with db.transaction() as session:
        sender = Sender(address=address, keys=[SenderKey(fingerprint=f) for f in fingerprints])
        session.add(sender)
        public_keys.store(session, crypto, fingerprints)
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
        problem = "key is missing from the keyring" if info is None else key_problem(info, False)
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

"""Members as records: adding one with its keys (or a removed one again), more keys, the
listing, what the relay records about each as an organisation, and its history.

A member's state changes only through relay/app/membership.py: adding a member is its
`ADD` move, made once the keys are vetted and imported (relay/app/key_vetting.py), so a
refused key changes nothing. Each use-case is one transaction with its audit rows.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session, object_session

from relay.app import membership
from relay.app.key_vetting import import_vetted, key_status, vet_keys
from relay.app.membership import Move
from relay.app.transactions import in_transaction
from relay.core.addresses import normalise_address
from relay.core.config import Settings
from relay.core.crypto import Crypto
from relay.core.database import Database
from relay.core.errors import KeyProblem, RelayError
from relay.core.logs import event
from relay.model import AuditEvent, Incident, Member, MemberKey, MemberState, utcnow
from relay.store import audit, key_owners, notices, public_keys, recipients
from relay.store.spool import Spool

log = logging.getLogger("relay.members")


# Views returned to the CLI (and to scripts through --json)


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
class MemberKeyView:
    fingerprint: str
    status: str  # usable, expired, revoked, weak, sign-only, missing
    expires_at: datetime | None


@dataclass(frozen=True)
class MemberDetail:
    member: MemberView
    keys: list[MemberKeyView]
    history: list[audit.AuditView]


def member_view(crypto: Crypto, member: Member, incidents: int | None = None) -> MemberView:
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
        state=membership.standing(member),
        fingerprints=fingerprints,
        usable=bool(usable),
        problem=problem,
        created_at=member.created_at,
        domains=list(member.domains or []),
        criteria=dict(member.criteria or {}),
        vouched_by=member.vouched_by,
        incidents=incidents or 0,
    )


def _get(session: Session, address: str) -> Member:
    member = membership.find(session, address)
    if member is None:
        raise RelayError(f"no member {address}")
    return member


def _refuse_taken(session: Session, fingerprints: Iterable[str]) -> None:
    """One key, one member: a shared key would let one member read another's copies."""
    query = select(MemberKey).where(MemberKey.fingerprint.in_(list(fingerprints)))
    if (taken := session.execute(query).scalars().first()) is not None:
        raise KeyProblem(
            f"key {taken.fingerprint} already belongs to member {taken.member.address}"
        )


# Adding


def import_new_member_keys(
    db: Database, crypto: Crypto, address: str, key_data: bytes
) -> list[str]:
    """The keys of a member about to be added (or added again): vetted, refused if another
    member holds one, then imported into the keyring. Changes nothing in the database."""
    found = vet_keys(crypto, key_data, need_encryption=True)
    with db.transaction() as session:
        existing = membership.check_move(session, address, Move.ADD)
        mine = {k.fingerprint for k in existing.keys} if existing else set()
        _refuse_taken(session, [k.fingerprint for k in found if k.fingerprint not in mine])
    return import_vetted(crypto, key_data, found, need_encryption=True)


def admit(
    session: Session,
    crypto: Crypto,
    address: str,
    name: str,
    fingerprints: list[str] | None,
    actor: str,
    **detail: Any,
) -> Member:
    """Add the member (membership's ADD) in the caller's transaction. With `fingerprints`
    (imported by `import_new_member_keys`) those are its keys, a returning member's old ones
    dropped, and stored for every node; without, a returning member keeps the keys it had."""
    if fingerprints is not None:
        detail["fingerprints"] = fingerprints
    member = membership.transition(session, address, Move.ADD, actor, name=name, **detail).member
    if fingerprints is not None:
        member.keys.clear()
        session.flush()  # the old keys' rows go before the new ones arrive
        member.keys.extend(MemberKey(fingerprint=f) for f in fingerprints)
        public_keys.store(session, crypto, fingerprints)
        for fpr in fingerprints:
            audit.record(session, actor, "key.imported", fpr, owner=f"member {address}")
    return member


def add_member(
    db: Database,
    crypto: Crypto,
    settings: Settings,
    address: str,
    name: str,
    key_data: bytes | None,
    actor: str,
) -> MemberView:
    """Add a member with one or more encryption keys (or bring back a removed member).

    Without `key_data` the member is added unreachable, as a groups-file sync or an
    approval adds one: its copies are held, never sent in plaintext, until
    `add_member_keys` releases them, and the security contact is told in the same
    transaction. A returning member keeps the keys it had."""
    address = normalise_address(address)
    name = name.strip()
    if not name:
        raise RelayError("a member needs a name (for example the distribution's name)")
    if address == settings.list.address:
        raise RelayError("that is the list's own address")
    fingerprints = None
    if key_data is not None:
        fingerprints = import_new_member_keys(db, crypto, address, key_data)

    def work(session: Session, spool: Spool) -> MemberView:
        member = admit(session, crypto, address, name, fingerprints, actor)
        session.flush()
        view = member_view(crypto, member)  # in the session: a returning member's incidents
        if not view.usable:
            tell_contact_keyless(session, spool, settings, [address], "command line")
        return view

    view = in_transaction(db, Spool(db), work)
    event(log, "member.added", address=address, keys=len(view.fingerprints))
    return view


def add_member_keys(
    db: Database,
    crypto: Crypto,
    address: str,
    key_data: bytes,
    actor: str,
    now: datetime | None = None,
) -> KeyImport:
    """Add keys to an existing member, vetted like `add_member`'s. If the member had no
    usable key before, its deliveries held for want of one go back to the queue."""
    address = normalise_address(address)
    found = vet_keys(crypto, key_data, need_encryption=True)
    with db.transaction() as session:
        member = _get(session, address)
        if member.state == MemberState.REMOVED:
            raise RelayError(f"{address} was removed; add it again with 'relay member add'")
        mine = {k.fingerprint for k in member.keys}
        new = [k.fingerprint for k in found if k.fingerprint not in mine]
        if not new:
            raise RelayError(f"{address} already has every key in the file")
        _refuse_taken(session, new)

    fingerprints = import_vetted(crypto, key_data, found, need_encryption=True)
    with db.transaction() as session:
        member = _get(session, address)
        if member.state == MemberState.REMOVED:
            raise RelayError(f"{address} was removed meanwhile; no key was added")
        mine = {k.fingerprint for k in member.keys}
        added = [f for f in fingerprints if f not in mine]
        member.keys.extend(MemberKey(fingerprint=f) for f in added)
        public_keys.store(session, crypto, added)
        for fpr in added:
            audit.record(session, actor, "key.imported", fpr, owner=f"member {address}")
        released = 0
        if member.state == MemberState.ACTIVE:
            released = recipients.release_key_holds(session, member.id, actor, now or utcnow())
        view = member_view(crypto, member)
    event(log, "member.keys_added", address=address, keys=len(added), released=released)
    return KeyImport(view, added, released)


def tell_contact_keyless(
    session: Session, spool: Spool, settings: Settings, addresses: list[str], why: str
) -> str:
    """Queue the security contact's notice that these members, added by `why`, have no
    usable key (so nothing is sent to them); returns its message id."""
    lst = settings.list
    lines = [
        f"These members were added from the {why} but have no usable key.",
        "Nothing is sent to them: their copies are held until a key is imported.",
        "",
        *(f"  {address}" for address in addresses),
        "",
        "Import each member's key with: relay key import FILE --member ADDRESS",
    ]
    return notices.enqueue_notice(
        session,
        spool,
        recipients=[lst.security_contact],
        subject=f"[{lst.name}] {len(addresses)} member(s) without a usable key",
        text="\n".join(lines) + "\n",
        list_domain=lst.domain,
        reason=f"members added without a usable key ({why})",
    )


# Reading and updating the record


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
            member_view(crypto, m, counts.get(m.id, 0)) for m in session.execute(query).scalars()
        ]


def update_member(
    db: Database,
    crypto: Crypto,
    address: str,
    actor: str,
    *,
    name: str | None = None,
    domains: list[str] | None = None,
    vouched_by: str | None = None,
) -> MemberView:
    """Change what the relay records about a member as an organisation, audited."""
    address = normalise_address(address)
    with db.transaction() as session:
        member = _get(session, address)
        changes: dict[str, Any] = {}
        if name is not None:
            name = " ".join(name.split())
            if not name:
                raise RelayError("a member needs a name")
            changes["name"] = name
        if domains is not None:
            changes["domains"] = sorted({_domain(d) for d in domains})
        if vouched_by is not None:
            voucher = _get(session, normalise_address(vouched_by))
            if voucher.id == member.id:
                raise RelayError("a member cannot vouch for itself")
            changes["vouched_by"] = voucher.address
        changes = {k: v for k, v in changes.items() if getattr(member, k) != v}
        if changes:
            old = {k: getattr(member, k) for k in changes}
            for key, value in changes.items():
                setattr(member, key, value)
            audit.record(session, actor, "member.updated", address, old=old, new=changes)
        return member_view(crypto, member)


def _domain(value: str) -> str:
    domain = value.strip().lower().rstrip(".")
    labels = domain.split(".")
    if len(labels) < 2 or not all(
        label and label.replace("-", "").isalnum() and label.isascii() for label in labels
    ):
        raise RelayError(f"not a domain name: {value!r}")
    return domain


def member_detail(db: Database, crypto: Crypto, address: str) -> MemberDetail:
    """One member with its keys (state and expiry) and its history from the audit trail."""
    address = normalise_address(address)
    with db.transaction() as session:
        member = _get(session, address)
        fingerprints = [k.fingerprint for k in member.keys]
        keys = []
        for fpr in fingerprints:
            info = crypto.key_info(fpr)
            keys.append(
                MemberKeyView(
                    fingerprint=fpr,
                    status="missing" if info is None else key_status(info),
                    expires_at=None if info is None else info.expires_at,
                )
            )
        subjects = [address, f"member:{member.id}", *fingerprints]
        rows = session.execute(
            select(AuditEvent)
            .where(or_(AuditEvent.subject.in_(subjects), AuditEvent.action == STATUS_ACTION))
            .order_by(AuditEvent.at, AuditEvent.id)
        ).scalars()
        history = [audit.audit_view(e) for e in rows if _about(e, subjects, address)]
        return MemberDetail(member_view(crypto, member), keys, history)


STATUS_ACTION = "advisory.status"


def _about(event: AuditEvent, subjects: list[str], address: str) -> bool:
    """Filed under the member, or an advisory's status that names it: the detail is sealed
    (it may quote an advisory), so the database cannot look inside it."""
    if event.subject in subjects:
        return True
    return (event.detail or {}).get("member") == address

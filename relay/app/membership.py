"""A member's life on the list: suspension, return, removal, its record, and the groups file.

The policy keeps the list's membership in a Kubernetes groups file (`groups:` entries with
`email-id`, `name`, `settings` and `members`). `read_group` parses one group from it and
refuses anything it cannot read completely, so a bad file changes nothing; `plan_sync`
compares it with the relay's members and `apply_sync` makes the change, audited.

Every state change is one transaction with its audit row (old and new state, reason), and
suspending or removing a member fails its unsent deliveries in that same transaction, so
nothing queued before the change reaches it afterwards.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import yaml
from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from relay.app.admin import (
    MemberView,
    _member_view,
    key_status,
    normalise_address,
)
from relay.app.transactions import in_transaction
from relay.core.config import Settings
from relay.core.crypto import Crypto
from relay.core.database import Database
from relay.core.errors import RelayError
from relay.core.logs import event
from relay.core.spool import Spool
from relay.model import AuditEvent, Member, MemberState
from relay.store import audit, notices, recipients

log = logging.getLogger("relay.membership")

# The state each command moves to, and the states it may move from.
_MOVES = {
    "suspend": (MemberState.SUSPENDED, (MemberState.ACTIVE,)),
    "resume": (MemberState.ACTIVE, (MemberState.SUSPENDED,)),
    "remove": (MemberState.REMOVED, (MemberState.ACTIVE, MemberState.SUSPENDED)),
}
_ACTIONS = {
    MemberState.SUSPENDED: "member.suspended",
    MemberState.ACTIVE: "member.resumed",
    MemberState.REMOVED: "member.removed",
}


@dataclass(frozen=True)
class StateChange:
    address: str
    old: str
    new: str
    cancelled: int  # unsent deliveries stopped by the change


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


def _find(session: Session, address: str) -> Member:
    member = session.execute(select(Member).where(Member.address == address)).scalar_one_or_none()
    if member is None:
        raise RelayError(f"no member {address}")
    return member


# State


def change_state(db: Database, address: str, move: str, actor: str, reason: str) -> StateChange:
    """`move` is suspend, resume or remove. Suspending or removing stops every unsent
    delivery to the member at once; resuming sends it only what is queued afterwards."""
    target, sources = _MOVES[move]
    address = normalise_address(address)
    reason = " ".join(reason.split())
    if not reason:
        raise RelayError("give a reason (it is kept in the audit trail)")
    with db.transaction() as session:
        member = _find(session, address)
        old = member.state
        if old not in sources:
            if old == target:
                raise RelayError(f"{address} is already {old}")
            hint = "; add it again with 'relay member add'" if old == MemberState.REMOVED else ""
            raise RelayError(f"{address} is {old} and cannot be {target} that way{hint}")
        member.state = target
        cancelled = 0
        if target != MemberState.ACTIVE:
            cancelled = recipients.cancel_member(
                session, member.id, actor, f"member {target}: {reason}"
            )
        audit.record(
            session,
            actor,
            _ACTIONS[target],
            address,
            old=old,
            new=target.value,
            reason=reason,
            cancelled=cancelled,
        )
    event(log, _ACTIONS[target], address=address, old=old, cancelled=cancelled)
    return StateChange(address, old, target.value, cancelled)


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
        member = _find(session, address)
        changes: dict[str, Any] = {}
        if name is not None:
            name = " ".join(name.split())
            if not name:
                raise RelayError("a member needs a name")
            changes["name"] = name
        if domains is not None:
            changes["domains"] = sorted({_domain(d) for d in domains})
        if vouched_by is not None:
            voucher = _find(session, normalise_address(vouched_by))
            if voucher.id == member.id:
                raise RelayError("a member cannot vouch for itself")
            changes["vouched_by"] = voucher.address
        changes = {k: v for k, v in changes.items() if getattr(member, k) != v}
        if changes:
            old = {k: getattr(member, k) for k in changes}
            for key, value in changes.items():
                setattr(member, key, value)
            audit.record(session, actor, "member.updated", address, old=old, new=changes)
        return _member_view(crypto, member)


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
        member = _find(session, address)
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
            .where(or_(AuditEvent.subject.in_(subjects), _mentions(address)))
            .order_by(AuditEvent.at, AuditEvent.id)
        ).scalars()
        history = [audit.audit_view(e) for e in rows]
        return MemberDetail(_member_view(crypto, member), keys, history)


def _mentions(address: str) -> Any:
    """Audit rows about the member filed under another subject (an advisory's statuses)."""
    member = AuditEvent.detail["member"].as_string()
    return (AuditEvent.action == "advisory.status") & (member == address)


# The groups file


@dataclass(frozen=True)
class Group:
    """One group of a Kubernetes groups file, as far as the relay uses it."""

    email_id: str
    name: str
    reconcile: bool  # settings ReconcileMembers: "true" (the file is the source of truth)
    members: list[str]


@dataclass(frozen=True)
class SyncPlan:
    group: Group
    added: list[str] = field(default_factory=list)  # new members (no key yet: unreachable)
    restored: list[str] = field(default_factory=list)  # removed members back in the file
    removed: list[str] = field(default_factory=list)  # not in the file, and the file rules
    unchanged: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)  # not in the file, kept (no reconcile)
    applied: bool = False
    notice: str | None = None  # the security contact's notice about unreachable members
    unreachable: list[str] = field(default_factory=list)  # in the file, no usable key

    @property
    def changes(self) -> int:
        return len(self.added) + len(self.restored) + len(self.removed)


def read_group(data: bytes | str, group: str, list_address: str | None = None) -> Group:
    """The group named `group` (its `name` or `email-id`) from a groups file.

    Refuses malformed YAML, a file without that group, and any member entry that is not
    an email address (all of them named), so that nothing is applied from a bad file."""
    try:
        doc = yaml.safe_load(data)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "cannot be parsed"
        raise RelayError(f"the groups file is not valid YAML{where}: {problem}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("groups"), list):
        raise RelayError("the groups file has no 'groups:' list")
    wanted = group.strip().lower()
    matches = [
        g
        for g in doc["groups"]
        if isinstance(g, dict)
        and wanted in (str(g.get("name", "")).lower(), str(g.get("email-id", "")).lower())
    ]
    if not matches:
        raise RelayError(f"no group {group!r} in the groups file")
    if len(matches) > 1:
        raise RelayError(f"the groups file has {len(matches)} groups named {group!r}")
    entry = matches[0]
    settings = entry.get("settings") or {}
    if not isinstance(settings, dict):
        raise RelayError(f"group {group!r}: 'settings' is not a mapping")
    members = entry.get("members") or []
    if not isinstance(members, list):
        raise RelayError(f"group {group!r}: 'members' is not a list")
    addresses: list[str] = []
    bad: list[str] = []
    for value in members:
        try:
            addresses.append(normalise_address(value if isinstance(value, str) else repr(value)))
        except RelayError:
            bad.append(repr(value))
    if bad:
        raise RelayError(f"group {group!r}: not email addresses: {', '.join(bad)}")
    if list_address is not None and list_address in addresses:
        raise RelayError(f"group {group!r} lists the list's own address {list_address}")
    return Group(
        email_id=str(entry.get("email-id") or ""),
        name=str(entry.get("name") or group),
        reconcile=str(settings.get("ReconcileMembers", "")).strip().lower() == "true",
        members=sorted(set(addresses)),
    )


def _plan(session: Session, group: Group) -> SyncPlan:
    present = {m.address: m for m in session.execute(select(Member)).scalars()}
    listed = set(group.members)
    plan = SyncPlan(group)
    for address in group.members:
        member = present.get(address)
        if member is None:
            plan.added.append(address)
        elif member.state == MemberState.REMOVED:
            plan.restored.append(address)
        else:
            plan.unchanged.append(address)
    for address, member in sorted(present.items()):
        if address in listed or member.state == MemberState.REMOVED:
            continue
        (plan.removed if group.reconcile else plan.kept).append(address)
    return plan


def plan_sync(db: Database, group: Group) -> SyncPlan:
    """What `apply_sync` would change; changes nothing."""
    with db.transaction() as session:
        return _plan(session, group)


def apply_sync(
    db: Database,
    spool: Spool,
    crypto: Crypto,
    settings: Settings,
    group: Group,
    actor: str,
    source: str,
) -> SyncPlan:
    """Make the members match the group, in one transaction with its audit rows.

    Members new to the relay come without a key: they are added but unreachable (their
    copies are held, never sent in plaintext) and the security contact is told which ones
    need a key. Removed members listed again come back with the keys they had."""

    def work(session: Session, spool: Spool) -> SyncPlan:
        plan = _plan(session, group)
        why = f"groups file {source}, group {group.name}"
        for address in plan.added:
            domain = address.rpartition("@")[2]
            session.add(
                Member(address=address, name=address, state=MemberState.ACTIVE, domains=[domain])
            )
            audit.record(session, actor, "member.added", address, new="active", source=why)
        for address in plan.restored:
            member = _find(session, address)
            member.state = MemberState.ACTIVE
            audit.record(
                session, actor, "member.restored", address, old="removed", new="active", source=why
            )
        for address in plan.removed:
            member = _find(session, address)
            reason = f"not in the {why} (ReconcileMembers)"
            cancelled = recipients.cancel_member(session, member.id, actor, reason)
            audit.record(
                session,
                actor,
                "member.removed",
                address,
                old=member.state,
                new="removed",
                reason=reason,
                cancelled=cancelled,
            )
            member.state = MemberState.REMOVED
        session.flush()
        unreachable = []
        for address in [*plan.added, *plan.restored]:
            if not _member_view(crypto, _find(session, address)).usable:
                unreachable.append(address)
        notice = None
        if unreachable:
            notice = _tell_contact(session, spool, settings, unreachable, why)
        audit.record(
            session,
            actor,
            "members.synced",
            group.email_id or group.name,
            source=source,
            reconcile=group.reconcile,
            added=plan.added,
            restored=plan.restored,
            removed=plan.removed,
        )
        return SyncPlan(
            group,
            plan.added,
            plan.restored,
            plan.removed,
            plan.unchanged,
            plan.kept,
            applied=True,
            notice=notice,
            unreachable=unreachable,
        )

    done = in_transaction(db, spool, work)
    event(
        log,
        "members.synced",
        group=group.name,
        added=len(done.added),
        restored=len(done.restored),
        removed=len(done.removed),
    )
    return done


def _tell_contact(
    session: Session, spool: Spool, settings: Settings, addresses: list[str], why: str
) -> str:
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
        reason="members without a key after a groups-file sync",
    )

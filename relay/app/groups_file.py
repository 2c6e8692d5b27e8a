"""The groups file: the list's membership as the policy keeps it, in a Kubernetes groups
file (`groups:` entries with `email-id`, `name`, `settings` and `members`).

`read_group` parses one group from it and refuses anything it cannot read completely, so
a bad file changes nothing; `plan_sync` compares it with the relay's members and
`apply_sync` makes the change in one transaction, every member's change a move of the
state machine (relay/app/membership.py) with its audit row.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import yaml
from sqlalchemy import select
from sqlalchemy.orm import Session

from relay.app import members, membership
from relay.app.membership import Move
from relay.app.transactions import in_transaction
from relay.core.addresses import normalise_address
from relay.core.config import Settings
from relay.core.crypto import Crypto
from relay.core.database import Database
from relay.core.errors import RelayError
from relay.core.logs import event
from relay.model import Member, MemberState
from relay.store import audit
from relay.store.spool import Spool

log = logging.getLogger("relay.groups_file")


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
            change = membership.transition(
                session, address, Move.ADD, actor, name=address, source=why
            )
            change.member.domains = [address.rpartition("@")[2]]
        for address in plan.restored:
            membership.transition(session, address, Move.RESTORE, actor, source=why)
        for address in plan.removed:
            reason = f"not in the {why} (ReconcileMembers)"
            membership.transition(session, address, Move.REMOVE, actor, reason=reason)
        session.flush()
        unreachable = []
        for address in [*plan.added, *plan.restored]:
            member = membership.find(session, address)
            if member is None or not members.member_view(crypto, member).usable:
                unreachable.append(address)
        notice = None
        if unreachable:
            notice = members.tell_contact_keyless(session, spool, settings, unreachable, why)
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

"""A member's state: one state machine, and the one writer of `Member.state`.

A member is active, suspended or removed (the row stays for history), or bouncing: an
active member whose copies bounced `[members] bounce_limit` times within `bounce_window`
(relay/app/bounces.py makes the move). A bouncing member is active in every other respect,
`Member.state` says so and `Member.bouncing_since` marks it: it still receives every copy
and may post, since a security alias that bounces may recover and a missed advisory costs
more than a bounce. `relay member resume` makes it plainly active again.

`TRANSITIONS` says which move leads from which standing to which, and `transition` is the
only code that changes a member's state or its bouncing mark: it refuses a move the table
does not allow, creates the row when a new address is added, stops the member's unsent
copies when it stops being active, and writes the audit row (old and new standing, the
reason, what was stopped), all in the caller's transaction. The CLI (`change_state`;
additions with keys in relay/app/members.py), the groups-file sync
(relay/app/groups_file.py), approved applications (relay/app/applications.py) and bounces
all go through it.
"""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from relay.core.addresses import normalise_address
from relay.core.database import Database
from relay.core.errors import RelayError
from relay.core.logs import event
from relay.model import Member, MemberState, utcnow
from relay.store import audit, recipients

log = logging.getLogger("relay.membership")

# The standing of an active member whose copies keep bouncing (`Member.bouncing_since`).
BOUNCING = "bouncing"


class Move(enum.StrEnum):
    ADD = "add"  # a new address, or a removed member added again
    RESTORE = "restore"  # a removed member listed again in the groups file, with its keys
    SUSPEND = "suspend"
    RESUME = "resume"
    REMOVE = "remove"
    BOUNCE = "bounce"  # its copies keep bouncing (relay/app/bounces.py)


@dataclass(frozen=True)
class Transition:
    sources: tuple[str | None, ...]  # standings; None: no member with that address yet
    target: MemberState
    action: str  # of the audit row
    needs_reason: bool = False  # refused without one: it is kept in the audit trail
    bouncing: bool = False  # the target is an active member marked bouncing

    @property
    def standing(self) -> str:
        return BOUNCING if self.bouncing else self.target.value


TRANSITIONS: dict[Move, Transition] = {
    Move.ADD: Transition((None, MemberState.REMOVED), MemberState.ACTIVE, "member.added"),
    Move.RESTORE: Transition((MemberState.REMOVED,), MemberState.ACTIVE, "member.restored"),
    Move.SUSPEND: Transition(
        (MemberState.ACTIVE, BOUNCING),
        MemberState.SUSPENDED,
        "member.suspended",
        needs_reason=True,
    ),
    Move.RESUME: Transition(
        (MemberState.SUSPENDED, BOUNCING), MemberState.ACTIVE, "member.resumed", needs_reason=True
    ),
    Move.REMOVE: Transition(
        (MemberState.ACTIVE, BOUNCING, MemberState.SUSPENDED), MemberState.REMOVED, "member.removed"
    ),
    Move.BOUNCE: Transition(
        (MemberState.ACTIVE,), MemberState.ACTIVE, "member.bouncing", bouncing=True
    ),
}


@dataclass(frozen=True)
class StateChange:
    address: str
    old: str | None  # None: the member is new
    new: str
    cancelled: int  # unsent deliveries stopped by the change
    member: Member = field(repr=False, compare=False)  # the row, in the caller's session


def standing(member: Member) -> str:
    """The member's state, or `bouncing` for an active member marked so."""
    if member.state == MemberState.ACTIVE and member.bouncing_since is not None:
        return BOUNCING
    return member.state


def find(session: Session, address: str) -> Member | None:
    """The member with this (normalised) address, whatever its state."""
    return session.execute(select(Member).where(Member.address == address)).scalar_one_or_none()


def check_move(session: Session, address: str, move: Move) -> Member | None:
    """The member `move` would change (None: a new address to add); refuses a move the
    table does not allow from the member's state."""
    rule = TRANSITIONS[move]
    member = find(session, address)
    old = None if member is None else standing(member)
    if old in rule.sources:
        return member
    if old is None:
        raise RelayError(f"no member {address}")
    if move == Move.ADD:
        raise RelayError(f"{address} is already a member ({old})")
    if old == rule.standing:
        raise RelayError(f"{address} is already {old}")
    hint = "; add it again with 'relay member add'" if old == MemberState.REMOVED else ""
    raise RelayError(f"{address} is {old} and cannot be {rule.standing} that way{hint}")


def transition(
    session: Session,
    address: str,
    move: Move,
    actor: str,
    *,
    reason: str | None = None,
    name: str | None = None,
    **detail: Any,
) -> StateChange:
    """Apply `move` to the member at `address` (normalised) in the caller's transaction.

    `name` names the member added (a new row is named by its address without one). A
    member that stops being active has every unsent delivery stopped at once; one that
    becomes active again receives only what is queued afterwards. `detail` goes into the
    audit row."""
    rule = TRANSITIONS[move]
    reason = " ".join(reason.split()) if reason else None
    if rule.needs_reason and not reason:
        raise RelayError("give a reason (it is kept in the audit trail)")
    member = check_move(session, address, move)
    old = None if member is None else standing(member)
    fields: dict[str, Any] = {"old": old, "new": rule.standing}
    if name is not None:
        fields["name"] = name
    if member is None:
        member = Member(address=address, name=name or address, state=rule.target)
        session.add(member)
    else:
        if name is not None and name != member.name:
            fields["old_name"] = member.name
            member.name = name
        member.state = rule.target
    # The mark belongs to an active member only, and every other move ends it.
    member.bouncing_since = utcnow() if rule.bouncing else None
    if reason is not None:
        fields["reason"] = reason
    cancelled = 0
    if rule.target != MemberState.ACTIVE:
        words = f"member {rule.target}: {reason}" if reason else f"member {rule.target}"
        cancelled = recipients.cancel_member(session, member.id, actor, words)
        fields["cancelled"] = cancelled
    audit.record(session, actor, rule.action, address, **fields, **detail)
    return StateChange(address, old, rule.standing, cancelled, member)


def change_state(
    db: Database, address: str, move: Move | str, actor: str, reason: str | None = None
) -> StateChange:
    """Suspend, resume or remove a member (`relay member suspend|resume|remove`), in its
    own transaction; suspending and resuming need a reason."""
    move = Move(move)
    address = normalise_address(address)
    with db.transaction() as session:
        change = transition(session, address, move, actor, reason=reason)
    action = TRANSITIONS[move].action
    event(log, action, address=address, old=change.old, cancelled=change.cancelled)
    return change

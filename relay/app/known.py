"""Whether what an administrator typed names something the relay holds: an advisory, a
member, a sender, an incident, a delivery, a post, a grant or an application.

One check for all of them, so that every command refuses an unknown one the same way
("no advisory 'NOPE-1'", exit 1) before it does anything. A listing filtered by a name
that matches nothing would otherwise print "none", which reads as "all is well" for a
typo. The use-cases keep their own checks: this one is for the words, theirs for the rows.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

from sqlalchemy.orm import Session

from relay.app import advisories, membership
from relay.core.addresses import normalise_address
from relay.core.database import Database
from relay.core.errors import RelayError
from relay.model import Application, Delivery, Grant, Incident, Message
from relay.store import key_owners

Kind = Literal[
    "advisory", "member", "sender", "incident", "delivery", "post", "grant", "application"
]


class Unknown(RelayError):
    """A name or number that names nothing the relay holds."""


# Row ids are 32-bit integers on PostgreSQL: a larger number names nothing, and asking
# for it would be a database error, not an answer.
_MAX_ID = 2**31 - 1


def _by_id(model: type) -> Callable[[Session, str | int], bool]:
    def find(session: Session, value: str | int) -> bool:
        if isinstance(value, int) and not 0 < value <= _MAX_ID:
            return False
        return session.get(model, value) is not None

    return find


_FINDS: dict[Kind, Callable[[Session, str | int], bool]] = {
    "advisory": lambda s, v: advisories.find(s, str(v)) is not None,
    # Any state counts: a removed member is still known (its history, `member add` again).
    "member": lambda s, v: membership.find(s, normalise_address(str(v))) is not None,
    "sender": lambda s, v: key_owners.sender_by_address(s, normalise_address(str(v))) is not None,
    "incident": _by_id(Incident),
    "delivery": _by_id(Delivery),
    "post": _by_id(Message),
    "grant": _by_id(Grant),
    "application": _by_id(Application),
}


def require(db: Database, kind: Kind, value: str | int) -> None:
    """Raise `Unknown` ("no member 'x@y.example'") unless `value` names a `kind` the relay
    holds; an address that is not one is refused as such."""
    with db.transaction() as session:
        if not _FINDS[kind](session, value):
            raise Unknown(f"no {kind} {value!r}")

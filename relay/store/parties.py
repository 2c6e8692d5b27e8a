"""Who an address is to the list, for one advisory: the `Kind` the forwarding rules judge.

One answer for every caller (the post router for To/Cc and `X-Share`, the dispatcher for
each copy it is about to send), read from the database in the caller's transaction:

- a member: the security alias of an active member;
- a sender: an authorised (SRC) sender, or the list's security contact, who receives
  leak reports whether or not it has been registered yet;
- a grant holder or a pending grant: a person a member shared this advisory with, who
  accepted the terms, or not yet (a revoked grant counts for nothing);
- a member's domain: an address in an active member's team (its alias's domain and the
  domains it declared), holding no grant;
- an outsider: anyone else.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from relay.model import GrantState, Member, MemberState, Sender
from relay.policy.forwarding import Kind
from relay.store.key_owners import grant_for, team_domains

__all__ = ["kind_of", "team_domains"]


def kind_of(session: Session, address: str, advisory_id: str, security_contact: str) -> Kind:
    address = address.strip().lower()
    if session.execute(
        select(Member.id).where(Member.address == address, Member.state == MemberState.ACTIVE)
    ).first():
        return Kind.MEMBER
    if (
        address == security_contact.lower()
        or session.execute(select(Sender.id).where(Sender.address == address)).first()
    ):
        return Kind.SENDER
    grant = grant_for(session, address, advisory_id)
    if grant is not None and grant.state == GrantState.ACCEPTED:
        return Kind.GRANT_HOLDER
    if grant is not None and grant.state == GrantState.PENDING:
        return Kind.PENDING_GRANT
    domain = address.rpartition("@")[2]
    members = session.execute(select(Member).where(Member.state == MemberState.ACTIVE)).scalars()
    if any(domain in team_domains(member) for member in members):
        return Kind.MEMBER_DOMAIN
    return Kind.OUTSIDER

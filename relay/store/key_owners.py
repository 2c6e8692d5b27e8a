"""Who owns which key: the list key, members' encryption keys, senders' signing keys, and
the keys of people a member shared an advisory with (grants).

Keys live in each node's keyring, which follows the database's copies (relay/store/
public_keys.py); ownership lives in the database. A member's usable keys are resolved at
delivery time, so an expiry or revocation takes effect at once and never leads to plaintext.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from relay.core.crypto import Crypto, KeyInfo
from relay.core.errors import KeyProblem
from relay.model import Grant, GrantState, Member, MemberKey, MemberState, Sender, SenderKey


def list_key(crypto: Crypto) -> KeyInfo:
    """The list's own key: the one secret key in the relay's keyring."""
    secret = [k for k in crypto.list_keys() if k.secret]
    if not secret:
        raise KeyProblem("the list has no key yet; run 'relay init'")
    if len(secret) > 1:
        raise KeyProblem("more than one secret key in the keyring; cannot tell the list key")
    return secret[0]


def usable(
    fingerprints: Iterable[str], lookup: Callable[[str], KeyInfo | None]
) -> tuple[list[str], str | None]:
    """The fingerprints that can be encrypted to now, and why none can (if so).

    `lookup` gives a key's state: `crypto.key_info`, or a listing already at hand.
    """
    found: list[str] = []
    problems: list[str] = []
    for fpr in fingerprints:
        info = lookup(fpr)
        problem = "key is missing from the keyring" if info is None else info.problem
        if problem is None:
            found.append(fpr)
        else:
            problems.append(f"key {fpr[-16:]}: {problem}")
    if found:
        return found, None
    return [], "; ".join(problems) or "no key on file"


def usable_keys(crypto: Crypto, fingerprints: list[str]) -> tuple[list[str], str | None]:
    return usable(fingerprints, crypto.key_info)


def sender_for(session: Session, fingerprint: str) -> Sender | None:
    """The authorised sender whose key made a signature (by primary fingerprint)."""
    row = session.execute(
        select(SenderKey).where(SenderKey.fingerprint == fingerprint.upper())
    ).scalar_one_or_none()
    return row.sender if row else None


def sender_addresses(session: Session, *also: str) -> list[str]:
    """Every authorised sender's address, oldest first, then `also` (the security contact,
    who is told whether or not it is registered), each once."""
    senders = session.execute(select(Sender.address).order_by(Sender.id)).scalars()
    return list(dict.fromkeys([*senders, *also]))


def sender_by_address(session: Session, address: str) -> Sender | None:
    return session.execute(
        select(Sender).where(Sender.address == address.lower())
    ).scalar_one_or_none()


def member_by_address(session: Session, address: str) -> Member | None:
    """The active member whose security alias this is."""
    return session.execute(
        select(Member).where(
            Member.address == address.strip().lower(), Member.state == MemberState.ACTIVE
        )
    ).scalar_one_or_none()


def member_for(session: Session, fingerprint: str) -> Member | None:
    """The active member whose key made a signature (by primary fingerprint)."""
    return session.execute(
        select(Member)
        .join(MemberKey, MemberKey.member_id == Member.id)
        .where(MemberKey.fingerprint == fingerprint.upper(), Member.state == MemberState.ACTIVE)
    ).scalar_one_or_none()


def grants_for_key(session: Session, fingerprint: str) -> list[Grant]:
    """The pending or accepted grants whose person signs with this key (oldest first).

    Fingerprints live in a JSON list; the live grants are few, so they are filtered here."""
    fingerprint = fingerprint.upper()
    live = session.execute(
        select(Grant)
        .where(Grant.state.in_((GrantState.PENDING, GrantState.ACCEPTED)))
        .order_by(Grant.id)
    ).scalars()
    return [g for g in live if fingerprint in g.fingerprints]


def grant_for(session: Session, address: str, advisory_id: str) -> Grant | None:
    """The latest grant of an advisory to an address, in whatever state (None: never shared)."""
    return session.execute(
        select(Grant)
        .where(Grant.address == address.lower(), Grant.advisory_id == advisory_id)
        .order_by(Grant.id.desc())
        .limit(1)
    ).scalar_one_or_none()


@dataclass(frozen=True)
class Owner:
    """Who a signing key belongs to, as registered with the relay: the only identity a
    signed post is attributed to (never the envelope sender or the From header)."""

    kind: str  # "sender" | "member" | "grant"
    address: str  # the sender's address, the member's security alias, the granted address
    from_addresses: frozenset[str] = frozenset()  # exact From addresses that are its own
    from_domains: frozenset[str] = frozenset()  # From domains that are its own (a team's)
    member: Member | None = None
    sender: Sender | None = None

    def owns_from(self, address: str) -> bool:
        """A From address belongs to this identity (compared case-insensitively)."""
        address = address.strip().lower()
        return address in self.from_addresses or address.rpartition("@")[2] in self.from_domains


def team_domains(member: Member) -> set[str]:
    """The domains a member's team mails from: its alias's and the ones it declared."""
    return {d.lower() for d in member.domains or []} | {member.address.rpartition("@")[2]}


def owner_of(session: Session, fingerprint: str) -> Owner | None:
    """The registered owner of a signing key: a sender, else an active member, else the
    person of a live grant; None when the key belongs to no one any more."""
    if (sender := sender_for(session, fingerprint)) is not None:
        return Owner("sender", sender.address, frozenset({sender.address}), sender=sender)
    if (member := member_for(session, fingerprint)) is not None:
        return Owner(
            "member",
            member.address,
            frozenset({member.address}),
            frozenset(team_domains(member)),
            member,
        )
    for grant in grants_for_key(session, fingerprint):
        return Owner("grant", grant.address, frozenset({grant.address.lower()}))
    return None

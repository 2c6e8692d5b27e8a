"""Need-to-know grants: a member shares one advisory with one person in its team.

The list's policy lets members share list information only within their team, on a
need-to-know basis, and only with people who first agreed to the same terms. A grant is
that agreement as the relay keeps it, per advisory and person:

- `share` (a member's signed post with `X-Share`, or `relay share`): the person's key is
  vetted like a member's and imported; the grant is pending and the person receives only
  the terms, encrypted to that key, with a random token. Nothing about the advisory (its
  title, its posts) reaches them yet.
- `accept` (a post signed by the person's key quoting `X-Accept: TOKEN`): the grant is
  accepted; the advisory's posts so far are queued for the person, and later posts reach
  them with the list (`relay.queue` adds accepted grant holders to a post's audience).
- `revoke` (`relay share revoke`): the person's unsent copies are cancelled at once.

The use-cases that the SMTP edge runs take the caller's session, so a share or an
acceptance commits with its post or not at all. Every change is audited; the token is
never shown in listings or the audit trail.
"""

from __future__ import annotations

import email
import email.policy
import logging
import re
import secrets
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from relay.app import advisories
from relay.core import addresses
from relay.core.addresses import normalise_address
from relay.core.config import Settings
from relay.core.crypto import Crypto
from relay.core.database import Database
from relay.core.errors import KeyProblem, RelayError
from relay.core.logs import event
from relay.model import (
    AdvisoryState,
    Grant,
    GrantState,
    Member,
    MemberKey,
    MemberState,
    Sender,
    SenderKey,
    utcnow,
)
from relay.store import audit, key_owners, notices, parties, public_keys, recipients
from relay.store.spool import Spool

log = logging.getLogger("relay.grants")

_ARMOURED_KEY = re.compile(
    rb"-----BEGIN PGP PUBLIC KEY BLOCK-----.*?-----END PGP PUBLIC KEY BLOCK-----", re.DOTALL
)


class GrantError(RelayError):
    """A share, an acceptance or a revocation the relay refuses."""


@dataclass(frozen=True)
class GrantView:
    """A grant as administrators see it (never its token)."""

    id: int
    advisory_id: str
    member: str
    address: str
    fingerprints: list[str]
    state: str
    created_at: datetime
    created_by: str
    accepted_at: datetime | None
    revoked_at: datetime | None
    revoked_by: str | None
    reason: str | None


def view(grant: Grant) -> GrantView:
    return GrantView(
        id=grant.id,
        advisory_id=grant.advisory_id,
        member=grant.member.address,
        address=grant.address,
        fingerprints=list(grant.fingerprints),
        state=grant.state,
        created_at=grant.created_at,
        created_by=grant.created_by,
        accepted_at=grant.accepted_at,
        revoked_at=grant.revoked_at,
        revoked_by=grant.revoked_by,
        reason=grant.reason,
    )


# Sharing


def share(
    session: Session,
    spool: Spool,
    crypto: Crypto,
    settings: Settings,
    *,
    advisory_id: str,
    member: Member,
    address: str,
    keys: list[bytes],
    actor: str,
) -> Grant:
    """Record a pending grant and queue its terms to the person, in the caller's transaction.

    `keys` are the person's public keys (one or more key files or blocks). Refuses a
    person outside the member's team, a list party, a second live grant, and keys that
    are unusable or belong to a member, a sender or the list.
    """
    # The person's address decides who receives: no routing syntax, no look-alike domain.
    address = addresses.plain(normalise_address(address))
    advisory = advisories.find(session, advisory_id)
    if advisory is None:
        raise GrantError(f"no advisory {advisory_id} on this list")
    if advisory.state != AdvisoryState.EMBARGOED:
        raise GrantError(f"{advisory.id} is {advisory.state}: there is nothing left to share")
    if member.state != MemberState.ACTIVE:
        raise GrantError(f"member {member.address} is {member.state}")
    _check_person(session, settings, member, address)
    live = key_owners.grant_for(session, address, advisory.id)
    if live is not None and live.state != GrantState.REVOKED:
        raise GrantError(f"{address} already holds a {live.state} grant for {advisory.id}")
    fingerprints = _import_keys(session, crypto, keys)
    public_keys.store(session, crypto, fingerprints)

    grant = Grant(
        advisory_id=advisory.id,
        member_id=member.id,
        member=member,
        address=address,
        fingerprints=fingerprints,
        state=GrantState.PENDING,
        token=secrets.token_hex(16),
        created_by=actor,
    )
    session.add(grant)
    session.flush()
    lst = settings.list
    grant.terms_message_id = notices.enqueue_advisory_notice(
        session,
        spool,
        recipients=[address],
        subject=f"[{lst.name}] {advisory.id}: the terms for need-to-know access",
        text=terms_text(settings, grant, member),
        list_domain=lst.domain,
        reason=f"terms of grant {grant.id}",
        advisory_id=advisory.id,
    )
    audit.record(
        session,
        actor,
        "grant.created",
        f"grant:{grant.id}",
        advisory=advisory.id,
        member=member.address,
        address=address,
        fingerprints=fingerprints,
    )
    for fpr in fingerprints:
        audit.record(session, actor, "key.imported", fpr, owner=f"grant {grant.id} {address}")
    event(log, "grant.created", id=grant.id, advisory=advisory.id, address=address)
    return grant


def share_by_admin(
    db: Database,
    spool: Spool,
    crypto: Crypto,
    settings: Settings,
    *,
    advisory_id: str,
    address: str,
    key_data: bytes,
    member_address: str,
    actor: str,
) -> GrantView:
    """`relay share ADVISORY ADDRESS --key FILE --for MEMBER`."""
    member_address = normalise_address(member_address)
    with db.transaction() as session:
        member = session.execute(
            select(Member).where(Member.address == member_address)
        ).scalar_one_or_none()
        if member is None:
            raise GrantError(f"no member {member_address}")
        grant = share(
            session,
            spool,
            crypto,
            settings,
            advisory_id=advisory_id,
            member=member,
            address=address,
            keys=[key_data],
            actor=actor,
        )
        return view(grant)


def _check_person(session: Session, settings: Settings, member: Member, address: str) -> None:
    """The person must be in the member's team and not already a party of the list."""
    if address == settings.list.address:
        raise GrantError("that is the list's own address")
    if session.execute(select(Member.id).where(Member.address == address)).first():
        raise GrantError(f"{address} is a member of the list; it needs no grant")
    if session.execute(select(Sender.id).where(Sender.address == address)).first():
        raise GrantError(f"{address} is an authorised sender; it needs no grant")
    team = parties.team_domains(member)
    if address.rpartition("@")[2] not in team:
        raise GrantError(
            f"{address} is not in the team of {member.address} "
            f"(its domains: {', '.join(sorted(team))})"
        )


def _import_keys(session: Session, crypto: Crypto, blobs: list[bytes]) -> list[str]:
    """Vet the person's keys as a member's (usable for encryption), then import them."""
    found = {blob: crypto.inspect_keys(blob) for blob in blobs}
    infos = [k for keys in found.values() for k in keys]
    if not infos:
        raise KeyProblem("no OpenPGP public key found for the person")
    if any(k.secret for k in infos):
        raise KeyProblem("a secret key was given; give the person's public key only")
    problems = [f"{k.fingerprint}: {k.problem}" for k in infos if k.problem]
    if problems:
        raise KeyProblem("key refused: " + "; ".join(problems))
    wanted = {k.fingerprint for k in infos}
    if wanted & {k.fingerprint for k in crypto.list_keys() if k.secret}:
        raise KeyProblem("that is the list's own key")
    # One key, one party: a signature must say who made it.
    for table, owner in ((MemberKey, "a member"), (SenderKey, "a sender")):
        taken = session.execute(
            select(table.fingerprint).where(table.fingerprint.in_(wanted))
        ).scalar()
        if taken is not None:
            raise KeyProblem(f"key {taken} belongs to {owner} of the list")
    fingerprints: list[str] = []
    for blob, keys in found.items():
        if keys:
            fingerprints += crypto.import_keys(blob)
    for fpr in fingerprints:
        merged = crypto.key_info(fpr)
        problem = "missing after import" if merged is None else merged.problem
        if problem:
            raise KeyProblem(f"key refused as merged with the relay's keyring: {fpr}: {problem}")
    return sorted(set(fingerprints))


def attached_keys(payload: bytes) -> list[bytes]:
    """The public keys attached to a verified post: application/pgp-keys parts, and
    ASCII-armoured key blocks in other attachments."""
    entity = email.message_from_bytes(payload, policy=email.policy.default)
    found: list[bytes] = []
    for part in entity.walk():
        if part.is_multipart():
            continue
        data = part.get_payload(decode=True)
        if not isinstance(data, bytes) or not data:
            continue
        if part.get_content_type() == "application/pgp-keys":
            found.append(data)
        elif part.get_content_disposition() == "attachment":
            found += _ARMOURED_KEY.findall(data)
    return found


def terms_text(settings: Settings, grant: Grant, member: Member) -> str:
    """The terms notice: who shared what (the advisory ID only), the policy's terms, and how to
    accept. It names no title and quotes nothing of the advisory."""
    lst = settings.list
    keys = "\n".join(f"  {fpr}" for fpr in grant.fingerprints)
    return (
        f"{member.name} ({member.address}), a member of the {lst.name} list ({lst.address}),\n"
        f"asked the list to share advisory {grant.advisory_id} with you ({grant.address})\n"
        "so that you can help get the issue fixed in their distribution.\n\n"
        "Before you receive anything about it, you must agree to the list's terms:\n\n"
        "- Share the information only within your team, on a need-to-know basis, to get\n"
        "  the issue fixed in your distribution.\n"
        "- Do not make it public, share it, or even hint at it elsewhere, except with the\n"
        "  list's explicit approval, until the public disclosure date and time agreed on\n"
        "  the list.\n"
        "- Anyone you share it with must first agree to these same terms.\n"
        "- If the information is shared beyond what these terms allow, you must urgently\n"
        f"  tell the security contact ({lst.security_contact}) exactly what leaked and to\n"
        "  whom, and what will be done to prevent it happening again. Leaks are recorded\n"
        "  against the member who shared the advisory with you.\n\n"
        f"To accept, send a message to {lst.address} signed with your OpenPGP key\n"
        f"{keys}\n"
        "(PGP/MIME or inline), whose body starts with this line:\n\n"
        f"X-Accept: {grant.token}\n\n"
        "Until you accept, nothing about the advisory is sent to you. If you did not\n"
        "expect this message, ignore it.\n"
    )


# Accepting


def accept(
    session: Session, settings: Settings, *, signer: str, token: str, now: datetime
) -> tuple[Grant, int]:
    """Accept the pending grant whose terms carried `token`, if `signer` is its person's key.

    Queues the advisory's posts so far for the person; returns the grant and that count.
    A wrong token or a key of another grant changes nothing.
    """
    token = token.strip()
    grant = next(
        (
            g
            for g in key_owners.grants_for_key(session, signer)
            if g.state == GrantState.PENDING and secrets.compare_digest(g.token, token)
        ),
        None,
    )
    if grant is None:
        raise GrantError("no pending grant for the signing key carries that token")
    grant.state, grant.accepted_at = GrantState.ACCEPTED, now
    actor = f"key:{signer}"
    audit.record(
        session,
        actor,
        "grant.accepted",
        f"grant:{grant.id}",
        advisory=grant.advisory_id,
        address=grant.address,
        old=GrantState.PENDING,
        new=GrantState.ACCEPTED,
    )
    backlog = recipients.deliver_backlog(
        session, grant.advisory_id, grant.address, settings.list.domain, now
    )
    event(log, "grant.accepted", id=grant.id, advisory=grant.advisory_id, backlog=backlog)
    return grant, backlog


# Listing and revoking


def list_grants(db: Database, advisory_id: str | None = None) -> list[GrantView]:
    with db.transaction() as session:
        query = select(Grant).order_by(Grant.id)
        if advisory_id is not None:
            query = query.where(func.upper(Grant.advisory_id) == advisory_id.strip().upper())
        return [view(g) for g in session.execute(query).scalars()]


def revoke(db: Database, grant_id: int, actor: str, reason: str | None) -> tuple[GrantView, int]:
    """Revoke a grant; its person's unsent copies are cancelled in the same transaction."""
    with db.transaction() as session:
        grant = session.get(Grant, grant_id)
        if grant is None:
            raise GrantError(f"no grant with id {grant_id}")
        if grant.state == GrantState.REVOKED:
            raise GrantError(f"grant {grant_id} is already revoked")
        old = grant.state
        grant.state, grant.revoked_at = GrantState.REVOKED, utcnow()
        grant.revoked_by, grant.reason = actor, reason
        cancelled = recipients.cancel_grant(
            session, grant.advisory_id, grant.address, actor, reason or f"grant {grant_id} revoked"
        )
        audit.record(
            session,
            actor,
            "grant.revoked",
            f"grant:{grant.id}",
            advisory=grant.advisory_id,
            address=grant.address,
            old=old,
            new=GrantState.REVOKED,
            reason=reason,
            cancelled=cancelled,
        )
        result = view(grant)
    event(log, "grant.revoked", id=grant_id, cancelled=cancelled)
    return result, cancelled

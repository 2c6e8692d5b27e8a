"""A key the list already holds, brought up to date from a file its owner published: a new
expiry, a new subkey, or its revocation (`relay key refresh FILE`).

Unlike a key for a new owner, a refreshed key is not refused for being revoked or expired:
taking in that news is the point, and the relay stops encrypting to it. A key that no
member, sender or grant names is refused (adding one is `member add`, `key import`,
`sender add`), and so is the list's own. The keys are stored for every node (relay/store/
public_keys.py); a member whose refreshed key is usable again gets its copies held for want
of one back in the queue, as `relay key import` does.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from relay.app.key_vetting import key_status
from relay.core.crypto import Crypto
from relay.core.database import Database
from relay.core.errors import KeyProblem
from relay.core.logs import event
from relay.model import Grant, MemberKey, MemberState, SenderKey, utcnow
from relay.store import audit, public_keys, recipients

log = logging.getLogger("relay.key_refresh")


@dataclass(frozen=True)
class Refreshed:
    fingerprint: str
    owners: list[str]
    status: str  # usable, expired, revoked, weak, sign-only (relay/app/key_vetting.py)


def refresh_keys(
    db: Database, crypto: Crypto, key_data: bytes, actor: str, now: datetime | None = None
) -> tuple[list[Refreshed], int]:
    """Import newer copies of keys the list holds; the keys and how many held copies went
    back to the queue."""
    found = crypto.inspect_keys(key_data)
    if not found:
        raise KeyProblem("no OpenPGP public key found in the key file")
    if any(k.secret for k in found):
        raise KeyProblem("the key file holds a secret key; give the public key only")
    wanted = [k.fingerprint for k in found]
    if {k.fingerprint for k in crypto.list_keys() if k.secret} & set(wanted):
        raise KeyProblem("that is the list's own key")
    with db.transaction() as session:
        owners = _owners(session, wanted)
    if unknown := [f for f in wanted if not owners.get(f)]:
        raise KeyProblem(
            "no member, sender or grant holds key(s) "
            + ", ".join(unknown)
            + "; nothing changed (a new key is added with 'relay key import')"
        )
    crypto.import_keys(key_data)
    with db.transaction() as session:
        public_keys.store(session, crypto, wanted)
        done = []
        for fpr in wanted:
            info = crypto.key_info(fpr)
            status = "missing" if info is None else key_status(info)
            done.append(Refreshed(fpr, owners[fpr], status))
            audit.record(session, actor, "key.refreshed", fpr, owners=owners[fpr], status=status)
        usable = [r.fingerprint for r in done if r.status == "usable"]
        released = _release(session, usable, actor, now or utcnow())
    event(log, "keys.refreshed", keys=len(done), released=released)
    return done, released


def _owners(session: Session, fingerprints: list[str]) -> dict[str, list[str]]:
    owners: dict[str, list[str]] = {}
    for mk in session.scalars(select(MemberKey).where(MemberKey.fingerprint.in_(fingerprints))):
        owners.setdefault(mk.fingerprint, []).append(f"member {mk.member.address}")
    for sk in session.scalars(select(SenderKey).where(SenderKey.fingerprint.in_(fingerprints))):
        owners.setdefault(sk.fingerprint, []).append(f"sender {sk.sender.address}")
    for grant in session.scalars(select(Grant).order_by(Grant.id)):  # fingerprints: a JSON list
        for fpr in set(grant.fingerprints) & set(fingerprints):
            owners.setdefault(fpr, []).append(f"grant {grant.id} {grant.address}")
    return owners


def _release(session: Session, usable: list[str], actor: str, now: datetime) -> int:
    """Active members with a usable key again: their copies held for want of one go back."""
    query = select(MemberKey).where(MemberKey.fingerprint.in_(usable))
    owners = {mk.member for mk in session.scalars(query)}
    active = sorted(m.id for m in owners if m.state == MemberState.ACTIVE)
    return sum(recipients.release_key_holds(session, m, actor, now) for m in active)

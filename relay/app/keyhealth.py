"""Key health: the state of every member key, and reminders before a key expires.

`check_keys` is meant to run daily (and on `relay key check`). It reports each key of
each member that is not removed, and the active members that cannot be reached because
none of their keys is usable: the dispatcher holds their copies (never plaintext) until
a key is imported. A key that expires within `[members] key_expiry_warning` earns its
member one encrypted reminder per key and expiry date, recorded in `key_reminders` in
the same transaction, so calling again (or concurrently) sends nothing twice; when a
check queues reminders, the security contact gets the list of expiring keys too.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from relay.app.key_vetting import key_status
from relay.app.transactions import in_transaction
from relay.core.config import Settings
from relay.core.crypto import Crypto
from relay.core.database import Database
from relay.core.logs import event
from relay.core.times import countdown, format_duration, format_when
from relay.model import KeyReminder, Member, MemberState
from relay.store import notices
from relay.store.spool import Spool

log = logging.getLogger("relay.keyhealth")

USABLE = ("usable", "expiring")


@dataclass(frozen=True)
class KeyState:
    member: str
    member_state: str
    fingerprint: str
    status: str  # usable, expiring, expired, revoked, weak, sign-only, missing
    expires_at: datetime | None


@dataclass(frozen=True)
class Unreachable:
    member: str
    problem: str


@dataclass(frozen=True)
class KeyCheck:
    checked_at: datetime
    keys: list[KeyState]
    unreachable: list[Unreachable]  # active members without a usable key
    reminded: list[str]  # fingerprints whose owners this check reminded
    notice: str | None  # the security contact's list, when reminders went out

    def expiring(self) -> list[KeyState]:
        return [k for k in self.keys if k.status == "expiring"]


def check_keys(
    db: Database, spool: Spool, crypto: Crypto, settings: Settings, now: datetime
) -> KeyCheck:
    """Check every member key by the injected clock; queue the reminders now due."""
    window = settings.members.key_expiry_warning
    known = {k.fingerprint: k for k in crypto.list_keys()}
    with db.transaction() as session:
        members = [
            (m.id, m.address, m.state, [k.fingerprint for k in m.keys])
            for m in session.execute(
                select(Member).where(Member.state != MemberState.REMOVED).order_by(Member.address)
            ).scalars()
        ]
    states: list[KeyState] = []
    unreachable: list[Unreachable] = []
    due: list[tuple[int, str, KeyState]] = []
    for member_id, address, state, fingerprints in members:
        mine = []
        for fpr in fingerprints:
            info = known.get(fpr)
            if info is None:
                status, expires_at = "missing", None
            else:
                status, expires_at = key_status(info), info.expires_at
                if status == "usable" and expires_at is not None:
                    if expires_at <= now:
                        status = "expired"  # by the injected clock, before gpg says so
                    elif expires_at - now <= window:
                        status = "expiring"
            mine.append(KeyState(address, state, fpr, status, expires_at))
        states += mine
        if state != MemberState.ACTIVE:
            continue
        if not any(k.status in USABLE for k in mine):
            problems = [f"{k.fingerprint[-16:]}: {k.status}" for k in mine]
            unreachable.append(Unreachable(address, "; ".join(problems) or "no key on file"))
        due += [(member_id, address, k) for k in mine if k.status == "expiring"]

    reminded: list[str] = []
    notice = None
    if due:

        def work(session: Session, spool: Spool) -> tuple[list[str], str | None]:
            return _remind(session, spool, settings, due, now)

        try:
            reminded, notice = in_transaction(db, spool, work)
        except IntegrityError:  # another check recorded them meanwhile and sent them
            reminded, notice = [], None
    if reminded or unreachable:
        event(log, "keys checked", reminded=len(reminded), unreachable=len(unreachable))
    return KeyCheck(now, states, unreachable, reminded, notice)


def _remind(
    session: Session,
    spool: Spool,
    settings: Settings,
    due: list[tuple[int, str, KeyState]],
    now: datetime,
) -> tuple[list[str], str | None]:
    done = set(
        session.execute(
            select(KeyReminder.fingerprint, KeyReminder.expires_at).where(
                KeyReminder.fingerprint.in_([k.fingerprint for _, _, k in due])
            )
        ).all()
    )
    pending = [(mid, addr, k) for mid, addr, k in due if (k.fingerprint, k.expires_at) not in done]
    if not pending:
        return [], None
    lst = settings.list
    for member_id, _, key in pending:
        assert key.expires_at is not None
        member = session.get_one(Member, member_id)
        message_id, _ = notices.enqueue_member_notice(
            session,
            spool,
            members=[member],
            subject=f"[{lst.name}] your OpenPGP key expires {countdown(key.expires_at, now)}",
            text=_member_text(settings, member.address, key, now),
            list_domain=lst.domain,
            reason=f"key {key.fingerprint} expires {key.expires_at.isoformat()}",
        )
        session.add(
            KeyReminder(
                fingerprint=key.fingerprint,
                expires_at=key.expires_at,
                member_id=member_id,
                sent_at=now,
                message_id=message_id,
            )
        )
    session.flush()  # a duplicate fails here, before anything is committed
    window = format_duration(settings.members.key_expiry_warning)
    lines = [f"Member keys that expire within {window} (the members were reminded):", ""]
    for _, address, key in pending:
        assert key.expires_at is not None
        lines.append(f"  {address}  {key.fingerprint}  expires {format_when(key.expires_at)}")
    lines += ["", "When a member sends a new key: relay key import FILE --member ADDRESS"]
    notice = notices.enqueue_notice(
        session,
        spool,
        recipients=[lst.security_contact],
        subject=f"[{lst.name}] {len(pending)} member key(s) expiring",
        text="\n".join(lines) + "\n",
        list_domain=lst.domain,
        reason="member keys expiring",
    )
    return [k.fingerprint for _, _, k in pending], notice


def _member_text(settings: Settings, address: str, key: KeyState, now: datetime) -> str:
    assert key.expires_at is not None
    lst = settings.list
    lines = [
        f"The OpenPGP key that {lst.name} encrypts your copies to expires "
        f"{countdown(key.expires_at, now)}, at {format_when(key.expires_at)}:",
        "",
        f"  {key.fingerprint}",
        "",
        f"After that nothing can be sent to {address}: copies are held, never sent",
        "unencrypted, until the list has a usable key for you.",
        "",
        "Extend the key's expiry date (or make a new key) and send the public key to",
        f"{lst.security_contact}.",
    ]
    return "\n".join(lines) + "\n"

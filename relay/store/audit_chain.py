"""The audit trail's hash chain: each row carries the SHA-256 of its canonical content,
which includes the hash of the row before it, so an edited, removed or inserted row
breaks every link after it.

Links are made at commit, the last thing a transaction does: it locks the one row of
`audit_chain_head`, numbers its new rows after the head and moves the head. Taking that
lock last keeps it out of any lock-order cycle, and holds it only for the commit.

The content hashed is the row as the relay reads it (the detail opened, not its sealed
form), so resealing under a new data key keeps the chain, and a row whose sealed detail
was altered fails to open, which the check reports as well.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Text, event, select, type_coerce
from sqlalchemy.orm import Session, object_session

from relay.core.sealing import SealedJSON, SealingError
from relay.model import AuditChainHead, AuditEvent

log = logging.getLogger("relay.audit")

GENESIS = "0" * 64  # the "previous hash" of the first row
HEAD_ID = 1
_PENDING = "audit_chain.pending"  # session.info: rows added, not yet linked
_BATCH = 500
_DETAIL = SealedJSON("audit_events.detail")  # opens a detail read as stored


def canonical(
    seq: int,
    row_id: int,
    at: datetime,
    actor: str,
    action: str,
    subject: str,
    detail: Any,
    prev_hash: str,
) -> bytes:
    """The bytes a row's hash covers: its fields and the previous row's hash, as JSON with
    sorted keys and no spaces (detail as it reads back from the database)."""
    content = {
        "v": 1,
        "seq": seq,
        "id": row_id,
        "at": at.astimezone(UTC).isoformat(timespec="microseconds"),
        "actor": actor,
        "action": action,
        "subject": subject,
        "detail": json.loads(json.dumps(detail)),  # as stored: tuples are lists, keys str
        "prev": prev_hash,
    }
    return json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def digest(seq: int, e: AuditEvent | _Stored, prev_hash: str) -> str:
    data = canonical(seq, e.id, e.at, e.actor, e.action, e.subject, e.detail, prev_hash)
    return hashlib.sha256(data).hexdigest()


def track(session: Session, row: AuditEvent) -> None:
    """Link `row` into the chain when its transaction commits."""
    session.info.setdefault(_PENDING, []).append(row)


@event.listens_for(Session, "before_commit")
def _link_pending(session: Session) -> None:
    pending: list[AuditEvent] = session.info.pop(_PENDING, [])
    if not pending:
        return
    session.flush()  # ids and times assigned
    # Rows of a rolled-back savepoint are no longer in the session.
    rows = sorted((r for r in pending if object_session(r) is session and r.id), key=_id)
    if not rows:
        return
    head = session.scalars(
        select(AuditChainHead).where(AuditChainHead.id == HEAD_ID).with_for_update()
    ).one_or_none()
    if head is None:
        head = _rebuilt_head(session)
    for row in rows:
        seq = head.seq + 1
        row.seq, row.prev_hash = seq, head.row_hash
        row.row_hash = digest(seq, row, head.row_hash)
        head.seq, head.row_hash = seq, row.row_hash


@event.listens_for(Session, "after_rollback")
def _drop_pending(session: Session) -> None:
    session.info.pop(_PENDING, None)


def _id(row: AuditEvent) -> int:
    return row.id


def _rebuilt_head(session: Session) -> AuditChainHead:
    """The head row is gone (only a hand in the database removes it): carry on from the
    newest linked row, so the list keeps working, and say so; the check still reports
    whatever was cut."""
    newest = session.scalars(
        select(AuditEvent).where(AuditEvent.seq.is_not(None)).order_by(AuditEvent.seq.desc())
    ).first()
    log.error("audit chain head missing: rebuilt from the newest linked row")
    head = AuditChainHead(
        id=HEAD_ID,
        seq=newest.seq if newest is not None and newest.seq else 0,
        row_hash=newest.row_hash if newest is not None and newest.row_hash else GENESIS,
    )
    session.add(head)
    return head


# The check


@dataclass(frozen=True)
class Break:
    """The first row where the chain does not hold."""

    row_id: int | None  # None: the break is at the end (rows missing after the last)
    reason: str


@dataclass(frozen=True)
class Walk:
    rows: int
    head: str | None  # the newest row's hash
    first_break: Break | None


def walk(session: Session) -> Walk:
    """Check every row, oldest first, and the head; the first break found, if any."""
    count, prev, seq = 0, GENESIS, 0
    unlinked = session.scalars(
        select(AuditEvent.id).where(AuditEvent.seq.is_(None)).order_by(AuditEvent.id).limit(1)
    ).first()
    for row_id, row in _rows(session):
        count += 1
        if row is None:
            return Walk(count, prev, Break(row_id, "its detail does not open: altered or moved"))
        seq += 1
        if row.seq != seq:
            missing = f"row number {seq} is missing" if row.seq > seq else "numbered twice"
            return Walk(count, prev, Break(row.id, f"out of sequence ({missing})"))
        if row.prev_hash != prev:
            return Walk(count, prev, Break(row.id, "it does not follow the row before it"))
        if row.row_hash != digest(seq, row, prev):
            return Walk(count, prev, Break(row.id, "its content does not match its hash"))
        prev = row.row_hash
    if unlinked is not None:
        return Walk(count, prev, Break(unlinked, "it is not linked into the chain"))
    head = session.get(AuditChainHead, HEAD_ID)
    if head is None:
        return Walk(count, prev, Break(None, "the chain's head record is missing"))
    if (head.seq, head.row_hash) != (seq, prev):
        cut = head.seq - seq
        reason = (
            f"the chain ends at row number {seq}; the head says {head.seq}"
            + (f" ({cut} row(s) missing at the end)" if cut > 0 else "")
        )
        return Walk(count, prev, Break(None, reason))
    return Walk(count, None if count == 0 else prev, None)


@dataclass(frozen=True)
class _Stored:
    """A row as the check reads it: detail opened here, so one bad row stops only itself."""

    id: int
    seq: int
    at: datetime
    actor: str
    action: str
    subject: str
    detail: Any
    prev_hash: str | None
    row_hash: str | None


def _rows(session: Session) -> Iterator[tuple[int, _Stored | None]]:
    """Linked rows in chain order, in batches; a row whose detail does not open as None."""
    table = AuditEvent.__table__
    column = table.c.detail
    dialect = session.get_bind().dialect
    after = 0
    while True:
        batch = session.execute(
            select(
                table.c.id,
                table.c.seq,
                table.c.at,
                table.c.actor,
                table.c.action,
                table.c.subject,
                type_coerce(column, Text()).label("stored"),
                table.c.prev_hash,
                table.c.row_hash,
            )
            .where(table.c.seq.is_not(None), table.c.seq > after)
            .order_by(table.c.seq)
            .limit(_BATCH)
        ).all()
        if not batch:
            return
        for r in batch:
            try:
                detail = _DETAIL.process_result_value(r.stored, dialect)
            except (SealingError, ValueError):  # ValueError: not JSON once opened
                yield r.id, None
                continue
            yield r.id, _Stored(
                r.id, r.seq, r.at, r.actor, r.action, r.subject, detail, r.prev_hash, r.row_hash
            )
        after = batch[-1].seq

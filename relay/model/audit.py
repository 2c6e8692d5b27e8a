"""The append-only audit trail."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    Integer,
    String,
)
from sqlalchemy.orm import Mapped, mapped_column

from relay.core.sealing import SealedJSON
from relay.model.base import Base, UTCDateTime, utcnow


class AuditEvent(Base):
    """Append-only record of every change: who, when, what, old and new value."""

    __tablename__ = "audit_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    actor: Mapped[str] = mapped_column(String(200))
    action: Mapped[str] = mapped_column(String(64), index=True)
    subject: Mapped[str] = mapped_column(String(320), index=True)
    # Sealed: a detail may carry an advisory's title or words (relay/core/sealing.py).
    detail: Mapped[dict | None] = mapped_column(SealedJSON("audit_events.detail"))
    # The hash chain (relay/store/audit_chain.py): the row's place in the chain, the hash
    # of the row before it and its own, set in the transaction that adds the row.
    seq: Mapped[int | None] = mapped_column(Integer, unique=True)
    prev_hash: Mapped[str | None] = mapped_column(String(64))
    row_hash: Mapped[str | None] = mapped_column(String(64))


class AuditChainHead(Base):
    """The chain's newest link, one row: locked by each transaction that adds audit rows,
    so links are made one transaction at a time, on one node or several; it also tells a
    verifier where the chain should end (rows cut off the end show as missing)."""

    __tablename__ = "audit_chain_head"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)  # always 1
    seq: Mapped[int] = mapped_column(Integer)
    row_hash: Mapped[str] = mapped_column(String(64))

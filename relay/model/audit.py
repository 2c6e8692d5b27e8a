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

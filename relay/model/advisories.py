"""Advisories, their reminders, and earlier lifts waiting for confirmation."""

from __future__ import annotations

import enum
from datetime import datetime

from sqlalchemy import (
    Boolean,
    ForeignKey,
    Integer,
    String,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from relay.core.sealing import SealedText
from relay.model.base import Base, UTCDateTime, utcnow


class AdvisoryState(enum.StrEnum):
    EMBARGOED = "embargoed"  # under embargo until lift_at (which may be unset while agreed)
    LIFTED = "lifted"  # public; terminal
    CANCELLED = "cancelled"  # withdrawn without a lift; terminal


class Advisory(Base):
    """One embargoed issue: every post belongs to one. History lives in audit_events."""

    __tablename__ = "advisories"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    title: Mapped[str] = mapped_column(SealedText("advisories.title"), default="")
    state: Mapped[str] = mapped_column(String(16), default=AdvisoryState.EMBARGOED, index=True)
    lift_at: Mapped[datetime | None] = mapped_column(UTCDateTime, index=True)
    created_by: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)
    lifted_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Sent in plaintext to the public addresses at the lift, and only if public_release.
    public_text: Mapped[str | None] = mapped_column(SealedText("advisories.public_text"))
    public_release: Mapped[bool] = mapped_column(Boolean, default=False)


class AdvisoryReminder(Base):
    """A reminder or warning already queued; the unique key makes each one go out once.

    `due_at` is part of the key, so moving a lift brings its reminders back.
    """

    __tablename__ = "advisory_reminders"
    __table_args__ = (UniqueConstraint("advisory_id", "kind", "due_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    advisory_id: Mapped[str] = mapped_column(ForeignKey("advisories.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(32))
    due_at: Mapped[datetime] = mapped_column(UTCDateTime)
    sent_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    message_id: Mapped[str | None] = mapped_column(String(32))


class PendingChangeState(enum.StrEnum):
    PENDING = "pending"  # waits for a second look
    APPLIED = "applied"  # confirmed and made; terminal
    SUPERSEDED = "superseded"  # another change to the lift came first; terminal
    REJECTED = "rejected"  # an administrator turned it down; terminal


class PendingChange(Base):
    """A signed post's request to bring a lift earlier (or to lift now), waiting for a
    confirmation by an administrator or by a different authorised sender."""

    __tablename__ = "pending_changes"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    advisory_id: Mapped[str] = mapped_column(ForeignKey("advisories.id"), index=True)
    # The lift time asked for; None: lift at once (X-Lift: now).
    lift_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    old_lift_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    requested_by: Mapped[str] = mapped_column(String(200))  # key:<fingerprint>
    requested_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    message_id: Mapped[str | None] = mapped_column(String(32))
    state: Mapped[str] = mapped_column(String(16), default=PendingChangeState.PENDING, index=True)
    decided_by: Mapped[str | None] = mapped_column(String(200))
    decided_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

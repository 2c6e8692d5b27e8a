"""The nodes of one relay and the leases they hold: several `relay serve` processes on one
database share the work, and the database says who does what."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from relay.model.base import Base, UTCDateTime, utcnow


class Node(Base):
    """A `relay serve` process, as it last reported itself (its heartbeat)."""

    __tablename__ = "nodes"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    host: Mapped[str] = mapped_column(String(255), default="")
    pid: Mapped[int] = mapped_column(Integer, default=0)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    heartbeat_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    stopped_at: Mapped[datetime | None] = mapped_column(UTCDateTime)  # None while it runs
    last_claim_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_delivery_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    errors_last_hour: Mapped[int] = mapped_column(Integer, default=0)
    restarts: Mapped[int] = mapped_column(Integer, default=0)
    # Tasks failing at the last heartbeat, with their last error.
    failing: Mapped[dict[str, str]] = mapped_column(JSON, default=dict)


class Lease(Base):
    """A role exactly one node holds at a time (the scheduler), until `expires_at`.

    Taken and renewed by one conditional UPDATE (held by me, or expired), so two nodes can
    never both succeed; a node that dies stops renewing and another takes over."""

    __tablename__ = "leases"

    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    holder: Mapped[str | None] = mapped_column(String(64))
    acquired_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)

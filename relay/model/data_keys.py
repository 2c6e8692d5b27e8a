"""The data keys that seal embargoed text at rest (relay/core/sealing.py), stored only
wrapped: OpenPGP-encrypted to the list key."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import LargeBinary, String
from sqlalchemy.orm import Mapped, mapped_column

from relay.model.base import Base, UTCDateTime, utcnow


class DataKey(Base):
    __tablename__ = "data_keys"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)  # hex of the 16-byte key id
    wrapped: Mapped[bytes] = mapped_column(LargeBinary)  # an OpenPGP message to the list key
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

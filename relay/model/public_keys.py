"""Members' and senders' public keys as the database holds them: the source of truth that
every node's keyring follows (relay/store/public_keys.py)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import LargeBinary, String
from sqlalchemy.orm import Mapped, mapped_column

from relay.model.base import Base, UTCDateTime, utcnow


class PublicKey(Base):
    __tablename__ = "public_keys"

    fingerprint: Mapped[str] = mapped_column(String(64), primary_key=True)
    data: Mapped[bytes] = mapped_column(LargeBinary)  # the key as gpg exports it, revocations too
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)

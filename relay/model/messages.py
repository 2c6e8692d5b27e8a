"""Posts and notices, their deliveries (the queue: a delivery's state is a column),
and the signatures already used."""

from __future__ import annotations

import enum
from datetime import datetime

from sqlalchemy import (
    JSON,
    Boolean,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from relay.core.references import new_reference
from relay.core.sealing import SealedBytes, SealedText
from relay.core.verp import new_token
from relay.model.base import Base, UTCDateTime, utcnow
from relay.model.members import Member


class DeliveryStatus(enum.StrEnum):
    QUEUED = "queued"  # waiting for its first attempt
    ACTIVE = "active"  # claimed by a worker (leased)
    DEFERRED = "deferred"  # temporary failure, retried at next_attempt_at
    HELD = "held"  # waits for an administrator or a key (never sent in plaintext)
    SENT = "sent"  # accepted by the next hop
    FAILED = "failed"  # settled unsent: its `FailureReason` says why


class HoldReason(enum.StrEnum):
    """Why a delivery is held: a closed list, kept in its own column (`hold_reason`), so a
    release selects exactly its own holds; `last_reason` keeps the words for people."""

    MODERATION = "moderation"  # a member's post waits for a moderator
    EMBARGO = "embargo"  # until the lift of `held_for` (None: the copy's own advisory)
    NO_KEY = "no-key"  # the recipient has no usable key; released when one is imported
    ENCRYPTION_FAILED = "encryption-failed"  # gpg could not sign and encrypt the copy
    COPY_NOT_BUILT = "copy-not-built"  # the copy could not be composed (fail closed)
    GATE_FAILED = "gate-failed"  # the forwarding check could not answer (fail closed)
    UNKNOWN = "unknown"  # held before reasons were recorded, for a reason no longer known


class FailureReason(enum.StrEnum):
    """Why a delivery failed for good: a closed list, kept in its own column
    (`failure_reason`), so what selects failed copies by their cause (a backlog queues
    again only those its recipient was withdrawn from) never reads words; `last_code`
    keeps the next hop's code and `last_reason` the words for people."""

    REJECTED = "rejected"  # the next hop refused the copy for good (an SMTP 5xx reply)
    UNUSABLE_ADDRESS = "unusable-address"  # an address the transport cannot put on the wire
    EXPIRED = "expired"  # temporary failures only, until the queue lifetime was over
    REMOVED = "removed"  # its member was removed or suspended before the copy went out
    GRANT_REVOKED = "grant-revoked"  # its recipient no longer holds an accepted grant
    MODERATOR_REJECTED = "moderator-rejected"  # a moderator refused the post
    INTERNAL_ERROR = "internal-error"  # reserved: the copy's preparation kept raising
    BOUNCED = "bounced"  # sent, then a delivery status notification said it failed for good
    UNKNOWN = "unknown"  # failed before reasons were recorded, for a reason no longer known


PENDING_STATUSES = (DeliveryStatus.QUEUED, DeliveryStatus.ACTIVE, DeliveryStatus.DEFERRED)


class MessageKind(enum.StrEnum):
    POST = "post"  # a signed post distributed to the list
    NOTICE = "notice"  # text the relay itself writes (failures, unreachable members)
    # A signed post refused because it leaked (copied to outsiders, shared outside the
    # team): kept as the evidence of its incidents, never delivered.
    REFUSED = "refused"


class Message(Base):
    """One accepted post or relay notice; its bytes live in the spool."""

    __tablename__ = "messages"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16), default=MessageKind.POST)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    mail_from: Mapped[str] = mapped_column(String(320), default="")
    signer_fingerprint: Mapped[str | None] = mapped_column(String(64))
    original_message_id: Mapped[str | None] = mapped_column(String(998))
    subject: Mapped[str] = mapped_column(SealedText("messages.subject"), default="")
    size: Mapped[int] = mapped_column(Integer, default=0)
    sha256: Mapped[str] = mapped_column(String(64))
    # Who posted it: the registered owner of the signing key (a sender's, member's or grant
    # holder's address), never the envelope sender or the From header, which nothing signs.
    poster: Mapped[str] = mapped_column(String(320), default="", server_default="")
    # A From address outside the signer's identity, accepted under `from_mismatch = "flag"`.
    from_mismatch: Mapped[str | None] = mapped_column(String(320))
    # The advisory the post (or the relay's notice about it) belongs to.
    advisory_id: Mapped[str | None] = mapped_column(ForeignKey("advisories.id"), index=True)
    deliveries: Mapped[list[Delivery]] = relationship(back_populates="message")


class MessageBody(Base):
    """A message's bytes (`part`: "raw" as received, "payload" as redistributed), sealed:
    in the database, so any node can deliver any message, and unreadable without the keyring."""

    __tablename__ = "message_bodies"

    message_id: Mapped[str] = mapped_column(
        ForeignKey("messages.id", ondelete="CASCADE"), primary_key=True
    )
    part: Mapped[str] = mapped_column(String(16), primary_key=True)
    data: Mapped[bytes] = mapped_column(SealedBytes("message_bodies.data"))


class Delivery(Base):
    """One copy of one message to one recipient, with its Postfix-like state."""

    __tablename__ = "deliveries"
    __table_args__ = (
        UniqueConstraint("message_id", "recipient"),
        Index("ix_deliveries_due", "status", "next_attempt_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    message_id: Mapped[str] = mapped_column(ForeignKey("messages.id"))
    member_id: Mapped[int | None] = mapped_column(ForeignKey("members.id"))
    recipient: Mapped[str] = mapped_column(String(320))
    # Only relay notices that quote nothing may go out unencrypted to a keyless recipient.
    plaintext_allowed: Mapped[bool] = mapped_column(Boolean, default=False)
    status: Mapped[str] = mapped_column(String(16), default=DeliveryStatus.QUEUED)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    lease_owner: Mapped[str | None] = mapped_column(String(64))  # the node that claimed it
    # Unexpected errors preparing or sending it; at `[delivery] max_errors` it fails.
    errors: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Fixed at accept time so a resend after a crash carries the same Message-ID.
    copy_message_id: Mapped[str] = mapped_column(String(255), unique=True)
    # The per-recipient reference the copy carries inside (relay/references.py), also fixed
    # when the delivery is queued: a leaked copy names its recipient by it.
    reference: Mapped[str] = mapped_column(String(20), unique=True, default=new_reference)
    # The copy's envelope sender is the VERP address with this token (relay/core/verp.py),
    # so its bounce names the delivery; random, unlike the id, so bounces cannot be forged.
    bounce_token: Mapped[str] = mapped_column(String(32), unique=True, default=new_token)
    # A copy held (`last_code` "embargo") until this advisory's lift because its text
    # quotes it; None: held for the copy's own advisory.
    held_for: Mapped[str | None] = mapped_column(String(64))
    hold_reason: Mapped[str | None] = mapped_column(String(32))  # a HoldReason while held
    failure_reason: Mapped[str | None] = mapped_column(String(32))  # a FailureReason if failed
    fingerprints: Mapped[list[str] | None] = mapped_column(JSON)
    last_code: Mapped[str | None] = mapped_column(String(16))
    last_reason: Mapped[str | None] = mapped_column(Text)
    # Copied from the message so per-advisory questions need no join (who got what).
    advisory_id: Mapped[str | None] = mapped_column(ForeignKey("advisories.id"), index=True)
    message: Mapped[Message] = relationship(back_populates="deliveries")
    member: Mapped[Member | None] = relationship()


class Bounce(Base):
    """A hard bounce of one delivery (relay/app/bounces.py): at most one per delivery, so
    the same notification twice counts once. A member's rows within `[members]
    bounce_window` decide whether it is bouncing; soft bounces are in the audit only."""

    __tablename__ = "bounces"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    delivery_id: Mapped[int] = mapped_column(
        ForeignKey("deliveries.id", ondelete="CASCADE"), unique=True
    )
    member_id: Mapped[int | None] = mapped_column(
        ForeignKey("members.id", ondelete="CASCADE"), index=True
    )
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    status: Mapped[str] = mapped_column(String(16))  # the DSN's, e.g. "5.1.1"


class UsedSignature(Base):
    """A signature the relay accepted (or kept as a refused post's evidence): each is
    believed once. `digest` identifies it by who signed what when (relay/inbound/freshness.py),
    unique in the database, so a replay is refused across restarts and nodes. Kept for good:
    a row is small, and a signature never becomes new again."""

    __tablename__ = "used_signatures"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    digest: Mapped[str] = mapped_column(String(64), unique=True)
    signer_fingerprint: Mapped[str] = mapped_column(String(64), index=True)
    signed_at: Mapped[datetime] = mapped_column(UTCDateTime)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    message_id: Mapped[str] = mapped_column(String(32))
    # Replays refused so far, and the last one: the operator's evidence of an attack.
    replays: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    last_replay_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

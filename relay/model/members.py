"""The list's people: members and their keys, senders, applications, key reminders,
and each member's contributing-back status."""

from __future__ import annotations

import enum
from datetime import datetime

from sqlalchemy import (
    JSON,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from relay.core.sealing import SealedText
from relay.model.base import Base, UTCDateTime, utcnow


class MemberState(enum.StrEnum):
    ACTIVE = "active"
    SUSPENDED = "suspended"
    REMOVED = "removed"


class Member(Base):
    __tablename__ = "members"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    address: Mapped[str] = mapped_column(String(320), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    state: Mapped[str] = mapped_column(String(16), default=MemberState.ACTIVE)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)
    # The distribution as an organisation: the domains its team mails from, the policy's
    # criteria it attested to ({"1": "answer", ...}) and the member who vouched for it.
    domains: Mapped[list[str]] = mapped_column(JSON, default=list, server_default="[]")
    criteria: Mapped[dict[str, str]] = mapped_column(JSON, default=dict, server_default="{}")
    vouched_by: Mapped[str | None] = mapped_column(String(320))
    # Set while an active member is bouncing (relay/app/membership.py): its copies bounced
    # `[members] bounce_limit` times within `bounce_window`. It still receives and posts
    # like any active member (a security alias may recover; a missed advisory is worse).
    bouncing_since: Mapped[datetime | None] = mapped_column(UTCDateTime)
    keys: Mapped[list[MemberKey]] = relationship(
        back_populates="member", cascade="all, delete-orphan", order_by="MemberKey.id"
    )


class MemberKey(Base):
    __tablename__ = "member_keys"
    __table_args__ = (UniqueConstraint("member_id", "fingerprint"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    member_id: Mapped[int] = mapped_column(ForeignKey("members.id", ondelete="CASCADE"))
    fingerprint: Mapped[str] = mapped_column(String(64))
    added_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    member: Mapped[Member] = relationship(back_populates="keys")


class Sender(Base):
    """An authorised SRC sender (or the security contact): may post, receives notices."""

    __tablename__ = "senders"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    address: Mapped[str] = mapped_column(String(320), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    keys: Mapped[list[SenderKey]] = relationship(
        back_populates="sender", cascade="all, delete-orphan", order_by="SenderKey.id"
    )


class SenderKey(Base):
    __tablename__ = "sender_keys"
    __table_args__ = (UniqueConstraint("sender_id", "fingerprint"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sender_id: Mapped[int] = mapped_column(ForeignKey("senders.id", ondelete="CASCADE"))
    fingerprint: Mapped[str] = mapped_column(String(64), index=True)
    added_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    sender: Mapped[Sender] = relationship(back_populates="keys")


class ApplicationState(enum.StrEnum):
    SUBMITTED = "submitted"  # waiting for vouches and a decision
    APPROVED = "approved"  # the member was created; terminal
    REJECTED = "rejected"  # terminal


class Application(Base):
    """A distribution's request to join, in the shape of the Kubernetes application template.

    `answers` holds the text of each criterion's answer as written ({"0": ..., "8": ...},
    "0" being the security alias); `vouches` the active members that vouched for it
    ([{"member", "at", "actor"}]). History is in the audit trail."""

    __tablename__ = "applications"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    distribution: Mapped[str] = mapped_column(String(200))
    alias: Mapped[str | None] = mapped_column(String(320), index=True)
    answers: Mapped[dict[str, str]] = mapped_column(JSON, default=dict)
    state: Mapped[str] = mapped_column(String(16), default=ApplicationState.SUBMITTED)
    submitted_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    submitted_by: Mapped[str] = mapped_column(String(200))
    vouches: Mapped[list[dict[str, str]]] = mapped_column(JSON, default=list)
    decided_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    decided_by: Mapped[str | None] = mapped_column(String(200))
    reason: Mapped[str | None] = mapped_column(Text)  # why it was rejected


class KeyReminder(Base):
    """An expiry reminder already queued: one per key and expiry date, so a key whose
    expiry is extended and nears its new date is reminded again."""

    __tablename__ = "key_reminders"
    __table_args__ = (UniqueConstraint("fingerprint", "expires_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    fingerprint: Mapped[str] = mapped_column(String(64))
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    member_id: Mapped[int] = mapped_column(ForeignKey("members.id", ondelete="CASCADE"))
    sent_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    message_id: Mapped[str] = mapped_column(String(32))


class ContributionStatus(enum.StrEnum):
    """How far a member got with an advisory's patches (the policy's "contributing back")."""

    NONE = "none"
    ACKNOWLEDGED = "acknowledged"
    REVIEWING = "reviewing"
    TESTED_NO_ISSUES = "tested-no-issues"
    ISSUE_FOUND = "issue-found"


class Contribution(Base):
    """One member's answer about one advisory; absent means "none". History is in the audit."""

    __tablename__ = "contributions"
    __table_args__ = (UniqueConstraint("advisory_id", "member_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    advisory_id: Mapped[str] = mapped_column(ForeignKey("advisories.id", ondelete="CASCADE"))
    member_id: Mapped[int] = mapped_column(ForeignKey("members.id", ondelete="CASCADE"))
    status: Mapped[str] = mapped_column(String(32), default=ContributionStatus.NONE)
    text: Mapped[str | None] = mapped_column(SealedText("contributions.text"))
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_by: Mapped[str] = mapped_column(String(200))
    member: Mapped[Member] = relationship()


class StatusReminder(Base):
    """A contributing-back reminder already queued: at most one per advisory and member."""

    __tablename__ = "status_reminders"
    __table_args__ = (UniqueConstraint("advisory_id", "member_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    advisory_id: Mapped[str] = mapped_column(ForeignKey("advisories.id", ondelete="CASCADE"))
    member_id: Mapped[int] = mapped_column(ForeignKey("members.id", ondelete="CASCADE"))
    sent_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    message_id: Mapped[str] = mapped_column(String(32))

"""Tables of the relay. The database is the queue: a delivery's state is a column.

Times are stored in UTC (`UTCDateTime` refuses naive values) and columns that
hold them end in `_at`.
"""

from __future__ import annotations

import enum
from datetime import UTC, datetime

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from relay.core.references import new_reference


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware in Python, UTC in the database, whatever the backend."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime refused: times are stored in UTC")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value, dialect):
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    pass


class MemberState(enum.StrEnum):
    ACTIVE = "active"
    SUSPENDED = "suspended"
    REMOVED = "removed"


class DeliveryStatus(enum.StrEnum):
    QUEUED = "queued"  # waiting for its first attempt
    ACTIVE = "active"  # claimed by a worker (leased)
    DEFERRED = "deferred"  # temporary failure, retried at next_attempt_at
    HELD = "held"  # waits for an administrator or a key (never sent in plaintext)
    SENT = "sent"  # accepted by the next hop
    FAILED = "failed"  # permanent error or queue lifetime exceeded


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


PENDING_STATUSES = (DeliveryStatus.QUEUED, DeliveryStatus.ACTIVE, DeliveryStatus.DEFERRED)


class MessageKind(enum.StrEnum):
    POST = "post"  # a signed post distributed to the list
    NOTICE = "notice"  # text the relay itself writes (failures, unreachable members)
    # A signed post refused because it leaked (copied to outsiders, shared outside the
    # team): kept as the evidence of its incidents, never delivered.
    REFUSED = "refused"


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


class Message(Base):
    """One accepted post or relay notice; its bytes live in the spool."""

    __tablename__ = "messages"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16), default=MessageKind.POST)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    mail_from: Mapped[str] = mapped_column(String(320), default="")
    signer_fingerprint: Mapped[str | None] = mapped_column(String(64))
    original_message_id: Mapped[str | None] = mapped_column(String(998))
    subject: Mapped[str] = mapped_column(Text, default="")
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
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Fixed at accept time so a resend after a crash carries the same Message-ID.
    copy_message_id: Mapped[str] = mapped_column(String(255), unique=True)
    # The per-recipient reference the copy carries inside (relay/references.py), also fixed
    # when the delivery is queued: a leaked copy names its recipient by it.
    reference: Mapped[str] = mapped_column(String(20), unique=True, default=new_reference)
    # A copy held (`last_code` "embargo") until this advisory's lift because its text
    # quotes it; None: held for the copy's own advisory.
    held_for: Mapped[str | None] = mapped_column(String(64))
    hold_reason: Mapped[str | None] = mapped_column(String(32))  # a HoldReason while held
    fingerprints: Mapped[list[str] | None] = mapped_column(JSON)
    last_code: Mapped[str | None] = mapped_column(String(16))
    last_reason: Mapped[str | None] = mapped_column(Text)
    # Copied from the message so per-advisory questions need no join (who got what).
    advisory_id: Mapped[str | None] = mapped_column(ForeignKey("advisories.id"), index=True)
    message: Mapped[Message] = relationship(back_populates="deliveries")
    member: Mapped[Member | None] = relationship()


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


class AuditEvent(Base):
    """Append-only record of every change: who, when, what, old and new value."""

    __tablename__ = "audit_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    actor: Mapped[str] = mapped_column(String(200))
    action: Mapped[str] = mapped_column(String(64), index=True)
    subject: Mapped[str] = mapped_column(String(320), index=True)
    detail: Mapped[dict | None] = mapped_column(JSON)


class AdvisoryState(enum.StrEnum):
    EMBARGOED = "embargoed"  # under embargo until lift_at (which may be unset while agreed)
    LIFTED = "lifted"  # public; terminal
    CANCELLED = "cancelled"  # withdrawn without a lift; terminal


class Advisory(Base):
    """One embargoed issue: every post belongs to one. History lives in audit_events."""

    __tablename__ = "advisories"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    title: Mapped[str] = mapped_column(Text, default="")
    state: Mapped[str] = mapped_column(String(16), default=AdvisoryState.EMBARGOED, index=True)
    lift_at: Mapped[datetime | None] = mapped_column(UTCDateTime, index=True)
    created_by: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)
    lifted_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Sent in plaintext to the public addresses at the lift, and only if public_release.
    public_text: Mapped[str | None] = mapped_column(Text)
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
    text: Mapped[str | None] = mapped_column(Text)
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


class IncidentKind(enum.StrEnum):
    """How the relay (or an administrator) came to know of a leak."""

    FORWARD_BLOCKED = "forward-blocked"  # the relay refused those recipients: nothing reached them
    FORWARD_FLAGGED = "forward-flagged"  # the same, without telling the sender
    EXTERNAL_CC = "external-cc"  # in a post's To/Cc: the sender's own mail system delivers there
    CONTENT_MATCH = "content-match"  # quoted embargoed text without naming the advisory
    REPORTED_BY_ADMIN = "reported-by-admin"  # learnt of by other means


class Incident(Base):
    """One leak (or attempted leak) of an advisory: what, to whom, by whom, and its report.

    `matched` keeps the matcher's evidence, excerpts included: they are embargoed text, no
    more secret than the advisory the relay already holds. The audit trail has the rest
    of the story but never the excerpts."""

    __tablename__ = "incidents"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    # The advisory as the leaked message named it: not a foreign key, since a refused post
    # may name one its refusal kept from being created.
    advisory_id: Mapped[str] = mapped_column(String(64), index=True)
    # Who leaked, when the relay can tell (a member's signature or address).
    member_id: Mapped[int | None] = mapped_column(ForeignKey("members.id"), index=True)
    sender: Mapped[str] = mapped_column(String(320))
    recipients: Mapped[list[str]] = mapped_column(JSON, default=list)
    kind: Mapped[str] = mapped_column(String(32))
    message_id: Mapped[str | None] = mapped_column(String(32))  # the relay's message, if any
    # {"score", "matched_fingerprints", "identifiers", "excerpts", "sources"} from the matcher.
    matched: Mapped[dict | None] = mapped_column(JSON)
    note: Mapped[str | None] = mapped_column(Text)  # an administrator's account of the leak
    recorded_by: Mapped[str] = mapped_column(String(200))
    report_message_id: Mapped[str | None] = mapped_column(String(32))
    resolved_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    resolved_by: Mapped[str | None] = mapped_column(String(200))
    resolution: Mapped[str | None] = mapped_column(Text)
    member: Mapped[Member | None] = relationship()


class GrantState(enum.StrEnum):
    PENDING = "pending"  # the terms were sent; nothing about the advisory reaches the person
    ACCEPTED = "accepted"  # agreed by a signed reply: the advisory's posts reach the person
    REVOKED = "revoked"  # terminal; a new share makes a new grant


class Grant(Base):
    """A member's need-to-know share of one advisory with one person in its team.

    `fingerprints` are the person's keys (primary fingerprints, in the relay's keyring):
    the copies are encrypted to them and the acceptance must be signed by one of them.
    `token` is the secret the terms notice carries and the acceptance quotes. History is
    in the audit trail."""

    __tablename__ = "grants"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    advisory_id: Mapped[str] = mapped_column(ForeignKey("advisories.id"), index=True)
    member_id: Mapped[int] = mapped_column(ForeignKey("members.id"), index=True)
    address: Mapped[str] = mapped_column(String(320), index=True)
    fingerprints: Mapped[list[str]] = mapped_column(JSON, default=list)
    state: Mapped[str] = mapped_column(String(16), default=GrantState.PENDING, index=True)
    token: Mapped[str] = mapped_column(String(64))
    terms_message_id: Mapped[str | None] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    created_by: Mapped[str] = mapped_column(String(200))
    accepted_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    revoked_by: Mapped[str | None] = mapped_column(String(200))
    reason: Mapped[str | None] = mapped_column(Text)  # why it was revoked
    member: Mapped[Member] = relationship()

"""Incidents (leaks and attempts) and need-to-know grants."""

from __future__ import annotations

import enum
from datetime import datetime

from sqlalchemy import (
    JSON,
    ForeignKey,
    Integer,
    String,
    Text,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from relay.core.sealing import SealedJSON, SealedText
from relay.model.base import Base, UTCDateTime, utcnow
from relay.model.members import Member


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
    matched: Mapped[dict | None] = mapped_column(SealedJSON("incidents.matched"))
    note: Mapped[str | None] = mapped_column(
        SealedText("incidents.note")
    )  # an administrator's account of the leak
    recorded_by: Mapped[str] = mapped_column(String(200))
    report_message_id: Mapped[str | None] = mapped_column(String(32))
    resolved_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    resolved_by: Mapped[str | None] = mapped_column(String(200))
    resolution: Mapped[str | None] = mapped_column(SealedText("incidents.resolution"))
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

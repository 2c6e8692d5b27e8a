"""The moderator's use-cases (`relay held`): the members' posts held for moderation, and
releasing or rejecting one, each in its own transaction (relay/store/moderation.py writes).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from relay.core.database import Database
from relay.store import moderation


@dataclass(frozen=True)
class HeldPost:
    """A post waiting for a moderator, with how many copies it holds."""

    id: str
    advisory_id: str | None
    mail_from: str
    signer: str | None
    received_at: datetime
    copies: int


def held_posts(db: Database) -> list[HeldPost]:
    """Posts waiting for a moderator, oldest first."""
    with db.transaction() as session:
        return [
            HeldPost(
                id=message.id,
                advisory_id=message.advisory_id,
                mail_from=message.mail_from,
                signer=message.signer_fingerprint,
                received_at=message.received_at,
                copies=copies,
            )
            for message, copies in moderation.held_posts(session)
        ]


def release(db: Database, message_id: str, actor: str) -> int:
    """Send a held post on to its audience; returns the copies queued."""
    with db.transaction() as session:
        return moderation.moderate(session, message_id, actor, release=True, reason="")


def reject(db: Database, message_id: str, actor: str, reason: str) -> int:
    """Refuse a held post: none of its copies is sent; returns the copies dropped."""
    with db.transaction() as session:
        return moderation.moderate(session, message_id, actor, release=False, reason=reason)

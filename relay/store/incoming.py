"""Incoming: a verified post made durable, and who it goes to.

`accept_post` commits, in one transaction, the message row and the post's exact bytes
(relay/store/spool.py), one delivery per recipient of its audience, the record of its
signature (used once), and whatever the router decided alongside; only then may the SMTP
edge answer `250`. A post refused for a leak is kept the same way as evidence
(`keep_refused`), with no delivery. From here on a delivery's state belongs to
relay/store/delivery_queue.py.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import (
    select,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from relay.core.database import (
    Database,
)
from relay.core.errors import RelayError
from relay.model import (
    Advisory,
    Delivery,
    DeliveryStatus,
    Grant,
    GrantState,
    HoldReason,
    Member,
    MemberState,
    Message,
    MessageKind,
    Sender,
    UsedSignature,
)
from relay.store import audit
from relay.store.delivery_queue import (
    copy_message_id,
    new_id,
)
from relay.store.spool import PAYLOAD, RAW, Spool


@dataclass(frozen=True)
class Accepted:
    message_id: str
    deliveries: int
    advisory_id: str | None = None


@dataclass(frozen=True)
class Routing:
    """Where an accepted post goes, decided inside the accept transaction."""

    advisory_id: str | None
    audience: str = "members"  # "members": every active member, and the advisory's accepted
    # grant holders; "senders": the SRC only; "nobody": a post that only tells the relay something
    hold: HoldReason | None = None  # held at once for this reason (moderation), or sent
    subject: str | None = None  # the copies' Subject, from signed data; None: the post's own


MEMBERS, SENDERS, NOBODY = "members", "senders", "nobody"


class AlreadyReceived(RelayError):
    """This signature was used before: a replay, refused whatever else the post says."""

    def __init__(self, used: UsedSignature) -> None:
        super().__init__(
            f"this signed post was already received (as {used.message_id}, "
            f"{used.received_at.strftime('%Y-%m-%d %H:%M:%S')} UTC); "
            "a signature is accepted once"
        )
        self.digest = used.digest


@dataclass(frozen=True)
class Post:
    """A verified post: its exact bytes, what it redistributes, and who signed it."""

    raw: bytes  # as received
    payload: bytes  # the verified content, keyword lines stripped
    subject: str  # from signed data only ("" when nothing signed names one)
    mail_from: str  # the envelope sender: kept as evidence, never used to attribute
    signer: str  # the signing key's primary fingerprint
    original_message_id: str | None = None
    signed_at: datetime | None = None  # the signature's creation time
    signature: str | None = None  # its identity (relay/inbound/freshness.py): used once
    poster: str = ""  # the signing key's registered owner (address)
    from_mismatch: str | None = None  # a From address outside that identity, when flagged

    def store(self, session: Session, spool: Spool, message_id: str) -> None:
        """Write the exact bytes and the payload in the transaction of the message's row."""
        spool.write(session, message_id, RAW, self.raw)
        spool.write(session, message_id, PAYLOAD, self.payload)

    def row(
        self, message_id: str, kind: str, advisory_id: str | None, subject: str | None = None
    ) -> Message:
        return Message(
            advisory_id=advisory_id,
            id=message_id,
            kind=kind,
            mail_from=self.mail_from,
            signer_fingerprint=self.signer,
            original_message_id=self.original_message_id,
            subject=self.subject if subject is None else subject,
            size=len(self.raw),
            sha256=hashlib.sha256(self.raw).hexdigest(),
            poster=self.poster,
            from_mismatch=self.from_mismatch,
        )

    def use_signature(self, session: Session, message_id: str) -> None:
        """Record the signature as used, in the post's own transaction: the unique digest
        makes a concurrent replay (another connection, another node) fail its commit."""
        if self.signature is None or self.signed_at is None:
            return
        session.add(
            UsedSignature(
                digest=self.signature,
                signer_fingerprint=self.signer,
                signed_at=self.signed_at,
                message_id=message_id,
            )
        )


def used_signature(db: Database, digest: str) -> UsedSignature | None:
    """The record of a signature already used, if any."""
    with db.transaction() as session:
        return session.execute(
            select(UsedSignature).where(UsedSignature.digest == digest)
        ).scalar_one_or_none()


def count_replay(db: Database, digest: str, now: datetime) -> None:
    """One more refused replay of a used signature (the operator's evidence of an attack)."""
    with db.transaction() as session:
        session.execute(
            update(UsedSignature)
            .where(UsedSignature.digest == digest)
            .values(replays=UsedSignature.replays + 1, last_replay_at=now)
        )


def accept_post(
    db: Database,
    spool: Spool,
    post: Post,
    *,
    list_domain: str,
    route: Callable[[Session, Spool, str], Routing] = lambda session, spool, message_id: Routing(
        None
    ),
) -> Accepted:
    """Make a verified post durable: one committed transaction, bytes and rows together.

    `route` runs inside that transaction with the new message id: it names the post's
    advisory (creating or rescheduling it) and its audience; if it raises, nothing is kept.
    """
    message_id = new_id()
    try:
        with db.transaction() as session:
            routing = route(session, spool, message_id)
            session.add(
                post.row(message_id, MessageKind.POST, routing.advisory_id, routing.subject)
            )
            post.store(session, spool, message_id)
            post.use_signature(session, message_id)
            count = 0
            for address, member_id in _audience(session, routing.audience, routing.advisory_id):
                session.add(
                    Delivery(
                        message_id=message_id,
                        member_id=member_id,
                        recipient=address,
                        copy_message_id=copy_message_id(list_domain),
                        advisory_id=routing.advisory_id,
                        status=DeliveryStatus.HELD if routing.hold else DeliveryStatus.QUEUED,
                        last_code=routing.hold,
                        hold_reason=routing.hold,
                    )
                )
                count += 1
            audit.record(
                session,
                audit.key_actor(post.signer),
                "message.accepted",
                message_id,
                deliveries=count,
                size=len(post.raw),
                audience=routing.audience,
                held=routing.hold,
                poster=post.poster or None,
                from_mismatch=post.from_mismatch,
            )
    except IntegrityError:
        replayed = used_signature(db, post.signature) if post.signature else None
        if replayed is not None:  # the same signature committed meanwhile: a replay
            raise AlreadyReceived(replayed) from None
        raise
    return Accepted(message_id, count, routing.advisory_id)


def keep_refused(
    db: Database,
    spool: Spool,
    post: Post,
    *,
    advisory_id: str,
    record: Callable[[Session, Spool, str], None],
) -> str:
    """Keep a post refused for a leak as the evidence of its incidents: its bytes and a
    message row with no delivery, and `record` (the incidents) in the same transaction.
    The post's advisory may not exist: the refusal kept the post from creating it."""
    message_id = new_id()
    try:
        with db.transaction() as session:
            known = session.get(Advisory, advisory_id) is not None
            session.add(post.row(message_id, MessageKind.REFUSED, advisory_id if known else None))
            post.store(session, spool, message_id)
            # Used too: a replay of the refused post is refused as a replay, not reported again.
            post.use_signature(session, message_id)
            session.flush()
            record(session, spool, message_id)
            audit.record(
                session,
                audit.key_actor(post.signer),
                "message.refused",
                message_id,
                size=len(post.raw),
            )
    except IntegrityError:
        replayed = used_signature(db, post.signature) if post.signature else None
        if replayed is not None:
            raise AlreadyReceived(replayed) from None
        raise
    return message_id


def _audience(
    session: Session, audience: str, advisory_id: str | None = None
) -> list[tuple[str, int | None]]:
    if audience == NOBODY:  # a post that only tells the relay something (a vouch)
        return []
    if audience == SENDERS:
        rows = session.execute(select(Sender.address).order_by(Sender.id)).scalars()
        return [(address, None) for address in rows]
    members = session.execute(
        select(Member.address, Member.id)
        .where(Member.state == MemberState.ACTIVE)
        .order_by(Member.id)
    ).all()
    found: list[tuple[str, int | None]] = [(address, member_id) for address, member_id in members]
    if advisory_id is not None:
        # People a member shared the advisory with, once they accepted the list's terms.
        seen = {address for address, _ in found}
        found += [(a, None) for a in grant_holders(session, advisory_id) if a not in seen]
    return found


def grant_holders(session: Session, advisory_id: str) -> list[str]:
    """The addresses holding an accepted grant for the advisory."""
    rows = session.execute(
        select(Grant.address)
        .where(Grant.advisory_id == advisory_id, Grant.state == GrantState.ACCEPTED)
        .order_by(Grant.id)
    ).scalars()
    return list(dict.fromkeys(rows))

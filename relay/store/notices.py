"""Relay notices: text the relay itself writes (lift notices, reminders, leak reports,
terms of a grant, failures), queued like posts in the caller's transaction.

Each notice is a message of kind `notice` with its text, one delivery per recipient and
an audit row, written by `_write` alone. A notice is encrypted to each recipient like a
post (held if the recipient has no usable key), except those that quote nothing of an
advisory (`enqueue_notice`) and an advisory's public text after its lift, which may go
out in plaintext.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

from sqlalchemy import select
from sqlalchemy.orm import Session

from relay.core.mime import text_part
from relay.model import Delivery, Member, MemberState, Message, MessageKind
from relay.store import audit
from relay.store.delivery_queue import RELAY_ACTOR, copy_message_id, new_id
from relay.store.incoming import grant_holders
from relay.store.spool import PAYLOAD, Spool


def enqueue_notice(
    session: Session,
    spool: Spool,
    *,
    recipients: Iterable[str],
    subject: str,
    text: str,
    list_domain: str,
    reason: str,
) -> str:
    """Queue a relay notice that quotes nothing of an advisory (a failure, an unreachable
    member), in the caller's transaction; it may go out in plaintext to a keyless recipient."""
    return enqueue_advisory_notice(
        session,
        spool,
        recipients=recipients,
        subject=subject,
        text=text,
        list_domain=list_domain,
        reason=reason,
        advisory_id=None,
        plaintext_allowed=True,
    )


def enqueue_list_notice(
    session: Session,
    spool: Spool,
    *,
    subject: str,
    text: str,
    list_domain: str,
    reason: str,
    advisory_id: str | None = None,
) -> tuple[str, int]:
    """Queue a relay notice to every active member, encrypted like a post, in the caller's
    transaction; returns the message id and the number of deliveries."""
    members = session.execute(
        select(Member).where(Member.state == MemberState.ACTIVE).order_by(Member.id)
    ).scalars()
    return enqueue_member_notice(
        session,
        spool,
        members=members,
        # People a member shared the advisory with hear of its lift and moves too.
        also=grant_holders(session, advisory_id) if advisory_id else (),
        subject=subject,
        text=text,
        list_domain=list_domain,
        reason=reason,
        advisory_id=advisory_id,
    )


def enqueue_advisory_notice(
    session: Session,
    spool: Spool,
    *,
    recipients: Iterable[str],
    subject: str,
    text: str,
    list_domain: str,
    reason: str,
    advisory_id: str | None,
    plaintext_allowed: bool = False,
) -> str:
    """Queue a notice about an advisory to addresses that are not members (senders, the
    security contact, public announcement lists), in the caller's transaction.

    Unless `plaintext_allowed`, a recipient without a usable key is held, never sent
    in the clear: only a lifted advisory's public text may travel unencrypted.
    """
    return _write(
        session,
        spool,
        recipients=[(a, None) for a in dict.fromkeys(r.lower() for r in recipients)],
        subject=subject,
        text=text,
        list_domain=list_domain,
        advisory_id=advisory_id,
        plaintext_allowed=plaintext_allowed,
        reason=reason,
    )


def _write(
    session: Session,
    spool: Spool,
    *,
    recipients: list[tuple[str, int | None]],
    subject: str,
    text: str,
    list_domain: str,
    advisory_id: str | None,
    plaintext_allowed: bool,
    reason: str,
) -> str:
    """The one writer of relay notices: message and its text, deliveries, audit row."""
    message_id = new_id()
    payload = text_part(text)
    session.add(
        Message(
            id=message_id,
            kind=MessageKind.NOTICE,
            subject=subject,
            size=len(payload),
            sha256=hashlib.sha256(payload).hexdigest(),
            advisory_id=advisory_id,
        )
    )
    spool.write(session, message_id, PAYLOAD, payload)
    for address, member_id in recipients:
        session.add(
            Delivery(
                message_id=message_id,
                member_id=member_id,
                recipient=address,
                plaintext_allowed=plaintext_allowed,
                copy_message_id=copy_message_id(list_domain),
                advisory_id=advisory_id,
            )
        )
    audit.record(
        session,
        RELAY_ACTOR,
        "notice.queued",
        message_id,
        reason=reason,
        advisory=advisory_id,
        deliveries=len(recipients),
        plaintext_allowed=plaintext_allowed,
    )
    return message_id


def enqueue_member_notice(
    session: Session,
    spool: Spool,
    *,
    members: Iterable[Member],
    subject: str,
    text: str,
    list_domain: str,
    reason: str,
    advisory_id: str | None = None,
    also: Iterable[str] = (),
) -> tuple[str, int]:
    """Queue a relay notice to some members (each copy encrypted to that member, held if it
    has no usable key), and to the non-members in `also` (grant holders), in the caller's
    transaction; returns the message id and count."""
    recipients: list[tuple[str, int | None]] = [(m.address, m.id) for m in members]
    recipients += [(a, None) for a in also]
    message_id = _write(
        session,
        spool,
        recipients=recipients,
        subject=subject,
        text=text,
        list_domain=list_domain,
        advisory_id=advisory_id,
        plaintext_allowed=False,
        reason=reason,
    )
    return message_id, len(recipients)


# The words of the notices the dispatcher sends the security contact


def failed_copy_text(delivery: Delivery) -> str:
    """A member's copy was given up (permanent error, or the queue lifetime passed)."""
    return (
        f"The copy of message {delivery.message_id} for {delivery.recipient} could not be "
        f"delivered and was given up.\n\nCopy Message-ID: {delivery.copy_message_id}\n"
        f"Last error: {delivery.last_code} {delivery.last_reason}\n\n"
        f"Check the member's address, then run: relay queue retry {delivery.id}\n"
    )


def unreachable_text(
    recipient: str, message_id: str, delivery_id: int, reason: str, remedy: str
) -> str:
    """A copy is held because it cannot be made for its recipient (no key, say)."""
    return (
        f"Member {recipient} could not be sent message {message_id}: {reason}.\n"
        f"Nothing was sent to it. The delivery is held (id {delivery_id}).\n\n"
        f"{remedy}, then run: relay queue retry {delivery_id}\n"
    )

"""Reading a message's text in the console: only on an administrator's explicit request
for that one message, and never without a trace. Each reading writes a `message.viewed`
audit row (who, which message, which advisory) in the transaction that reads the text."""

from __future__ import annotations

import email
import email.policy
import logging
from dataclasses import dataclass

from relay.core.database import Database
from relay.core.errors import RelayError
from relay.core.logs import event
from relay.model import Message
from relay.store import audit
from relay.store.spool import PAYLOAD, MissingPart, Spool

log = logging.getLogger("relay.viewing")

ACTION = "message.viewed"


@dataclass(frozen=True)
class MessageText:
    id: str
    kind: str
    advisory_id: str | None
    mail_from: str
    subject: str
    text: str  # the text parts of the redistributed content, one after the other


def read_message(db: Database, spool: Spool, message_id: str, actor: str) -> MessageText:
    """The text of one message, as the relay redistributes it; audited as read by `actor`."""
    with db.transaction() as session:
        message = session.get(Message, message_id)
        if message is None:
            raise RelayError(f"no message {message_id!r}")
        try:
            payload = spool.read(message.id, PAYLOAD, session)
        except MissingPart:
            raise RelayError(f"the spool no longer holds the text of {message.id}") from None
        audit.record(session, actor, ACTION, message.id, advisory=message.advisory_id)
        shown = MessageText(
            id=message.id,
            kind=message.kind,
            advisory_id=message.advisory_id,
            mail_from=message.mail_from,
            subject=message.subject,
            text=_text_of(payload),
        )
    event(log, ACTION, message=message_id, actor=actor)
    return shown


def _text_of(payload: bytes) -> str:
    """Every text/plain part, decoded; a note for each other part instead of its bytes."""
    try:
        entity = email.message_from_bytes(payload, policy=email.policy.default)
        texts = []
        for part in entity.walk():
            if part.is_multipart():
                continue
            if part.get_content_type() == "text/plain":
                texts.append(part.get_content())
            else:
                name = part.get_filename() or "unnamed"
                texts.append(f"[{part.get_content_type()} part {name!r} not shown]")
        return "\n".join(texts)
    except Exception:  # a structure the parser cannot take: the bytes as text, replaced
        return payload.decode("utf-8", "replace")

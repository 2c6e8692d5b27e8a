"""Who received what: `relay trace` names the advisory a leaked text comes from and,
where a copy-specific part survived, the recipient whose copy it was.

Two kinds of evidence: the text itself, matched against every advisory the list
carried (relay/watch.py), and the Message-IDs it contains: each copy the relay
sends has its own, recorded with its delivery.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from sqlalchemy import select

from relay.db import Database
from relay.matcher import Match
from relay.models import AdvisoryState, Delivery, Message
from relay.spool import Spool
from relay.watch import EmbargoedText

_MESSAGE_ID = re.compile(r"<([^<>\s@]+)@([^<>\s@]+)>")


@dataclass(frozen=True)
class Copy:
    delivery_id: int
    recipient: str
    advisory_id: str | None
    message_id: str
    evidence: str  # the Message-ID found in the text


@dataclass
class Trace:
    matches: list[Match] = field(default_factory=list)
    copies: list[Copy] = field(default_factory=list)
    messages: list[tuple[str, str | None]] = field(default_factory=list)  # message id, advisory


def trace(db: Database, spool: Spool, text: str, list_domain: str) -> Trace:
    result = Trace()
    index = EmbargoedText(spool, states=tuple(AdvisoryState))
    with db.transaction() as session:
        result.matches = index.match(session, text)
        for local, domain in dict.fromkeys(_MESSAGE_ID.findall(text)):
            if domain.lower() != list_domain:
                continue
            reference = f"<{local}@{domain}>"
            delivery = session.execute(
                select(Delivery).where(Delivery.copy_message_id == reference)
            ).scalar_one_or_none()
            if delivery is not None:
                result.copies.append(
                    Copy(
                        delivery.id,
                        delivery.recipient,
                        delivery.advisory_id,
                        delivery.message_id,
                        reference,
                    )
                )
            elif local.isalnum() and (message := session.get(Message, local)) is not None:
                result.messages.append((message.id, message.advisory_id))
    return result

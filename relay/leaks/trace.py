"""Who received what: `relay trace` names the advisory a leaked text comes from and,
where a copy-specific part survived, the recipient whose copy it was.

Three kinds of evidence: the text itself, matched against every advisory the list
carried (relay/leaks/index.py); the copy references it contains (relay/core/references.py: in
every copy's protected headers and in the notice at the top of its body); and the
Message-IDs it contains. References and Message-IDs are per copy, recorded with the
delivery, so either one names the recipient.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from sqlalchemy import select

from relay.core.database import Database
from relay.core.references import find_references
from relay.leaks.index import EmbargoedText
from relay.leaks.matcher import Match
from relay.model import AdvisoryState, Delivery, Message
from relay.store.spool import Spool

_MESSAGE_ID = re.compile(r"<([^<>\s@]+)@([^<>\s@]+)>")


@dataclass(frozen=True)
class Copy:
    delivery_id: int
    recipient: str
    advisory_id: str | None
    message_id: str
    evidence: str  # what was found in the text: the copy's reference or its Message-ID


@dataclass
class Trace:
    matches: list[Match] = field(default_factory=list)
    copies: list[Copy] = field(default_factory=list)
    messages: list[tuple[str, str | None]] = field(default_factory=list)  # message id, advisory

    def add(self, delivery: Delivery, evidence: str) -> None:
        """A copy named by `evidence`; a copy named twice (reference and Message-ID) once."""
        if all(c.delivery_id != delivery.id for c in self.copies):
            self.copies.append(
                Copy(
                    delivery.id,
                    delivery.recipient,
                    delivery.advisory_id,
                    delivery.message_id,
                    evidence,
                )
            )


def trace(db: Database, spool: Spool, text: str, list_domain: str) -> Trace:
    result = Trace()
    index = EmbargoedText(spool, states=tuple(AdvisoryState))
    with db.transaction() as session:
        result.matches = index.match(session, text)
        for reference in find_references(text):
            delivery = session.execute(
                select(Delivery).where(Delivery.reference == reference)
            ).scalar_one_or_none()
            if delivery is not None:
                result.add(delivery, reference)
        for local, domain in dict.fromkeys(_MESSAGE_ID.findall(text)):
            if domain.lower() != list_domain:
                continue
            reference = f"<{local}@{domain}>"
            delivery = session.execute(
                select(Delivery).where(Delivery.copy_message_id == reference)
            ).scalar_one_or_none()
            if delivery is not None:
                result.add(delivery, reference)
            elif local.isalnum() and (message := session.get(Message, local)) is not None:
                result.messages.append((message.id, message.advisory_id))
    return result

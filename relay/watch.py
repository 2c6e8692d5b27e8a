"""The index of embargoed text: what the list's senders posted about advisories still
under embargo, kept in a `relay.matcher.Matcher` so a message that names no advisory
but quotes one is still recognised.

Built from the database and the spool when the relay starts (or on first use), then
brought up to date on each use: new posts are added, advisories no longer embargoed are
dropped. Thread-safe (the SMTP edge accepts posts in worker threads, the dispatcher
asks from its own).
"""

from __future__ import annotations

import email
import email.policy
import threading

from sqlalchemy import select
from sqlalchemy.orm import Session

from relay.matcher import Match, Matcher
from relay.models import Advisory, AdvisoryState, Message, MessageKind, SenderKey
from relay.spool import PAYLOAD, Spool


class EmbargoedText:
    def __init__(
        self, spool: Spool, states: tuple[AdvisoryState, ...] = (AdvisoryState.EMBARGOED,)
    ) -> None:
        self.spool = spool
        self.states = states  # which advisories to index: embargoed ones, or (trace) all
        self._matcher = Matcher()
        self._indexed: set[str] = set()  # message ids
        self._lock = threading.Lock()

    def match(self, session: Session, text: str) -> list[Match]:
        with self._lock:
            self._refresh(session)
            return self._matcher.match(text)

    def refresh(self, session: Session) -> None:
        """Bring the index up to date now (at start-up, so no accept waits for it)."""
        with self._lock:
            self._refresh(session)

    def _refresh(self, session: Session) -> None:
        embargoed = set(
            session.execute(select(Advisory.id).where(Advisory.state.in_(self.states))).scalars()
        )
        for advisory_id in self._matcher.advisories():
            if advisory_id not in embargoed:
                self._matcher.remove(advisory_id)
        senders = select(SenderKey.fingerprint)
        rows = session.execute(
            select(Message.id, Message.advisory_id, Message.subject).where(
                Message.kind == MessageKind.POST,
                Message.advisory_id.in_(embargoed),
                Message.signer_fingerprint.in_(senders),
            )
        ).all()
        for message_id, advisory_id, subject in rows:
            if message_id in self._indexed and advisory_id in self._matcher:
                continue
            self._indexed.add(message_id)
            body, attachments = _texts(self.spool.read(message_id, PAYLOAD))
            self._matcher.add(
                advisory_id, body, subjects=[subject] if subject else [], identifiers=[advisory_id]
            )
            for name, text in attachments:
                self._matcher.add_attachment(advisory_id, name, text)


def text_of(payload: bytes) -> str:
    """Every text part of a message's payload (body and attached patches), for matching."""
    body, attachments = _texts(payload)
    return "\n".join([body, *(text for _, text in attachments)])


def _texts(payload: bytes) -> tuple[str, list[tuple[str, str]]]:
    """The post's body text and its text attachments (patches), decoded."""
    entity = email.message_from_bytes(payload, policy=email.policy.default)
    body: list[str] = []
    attachments: list[tuple[str, str]] = []
    for part in entity.walk():
        if part.is_multipart() or part.get_content_maintype() != "text":
            continue
        try:
            text = str(part.get_content())
        except (LookupError, ValueError):
            continue
        name = part.get_filename()
        if name:
            attachments.append((name, text))
        else:
            body.append(text)
    return "\n".join(body), attachments

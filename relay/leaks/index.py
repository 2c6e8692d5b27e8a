"""The index of embargoed text: what the list's senders posted about advisories still
under embargo, kept in a `relay.leaks.matcher.Matcher` so a message that names no advisory
but quotes one is still recognised.

Posts are read through relay/leaks/content.py (every part, archives included) and
fingerprinted through relay/leaks/winnowing.py, the same as every scan. Built from the
database and the spool when the relay starts (or on first use), then brought up to date
on each use: new posts are added, advisories no longer embargoed are dropped. Thread-safe
(the SMTP edge accepts posts in worker threads, the dispatcher asks from its own).
"""

from __future__ import annotations

import threading

from sqlalchemy import select
from sqlalchemy.orm import Session

from relay.leaks.content import read_content
from relay.leaks.matcher import Match, Matcher
from relay.model import Advisory, AdvisoryState, Message, MessageKind, SenderKey
from relay.store.spool import PAYLOAD, Spool


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
        for message_id, posted_about, subject in rows:
            advisory_id = str(posted_about)  # not None: selected by advisory_id IN (...)
            if message_id in self._indexed and advisory_id in self._matcher:
                continue
            self._indexed.add(message_id)
            content = read_content(self.spool.read(message_id, PAYLOAD, session))
            self._matcher.add(
                advisory_id,
                content.body,
                subjects=[subject] if subject else [],
                identifiers=[advisory_id],
            )
            for name, text in content.attachments:
                self._matcher.add_attachment(advisory_id, name, text)


def text_of(payload: bytes) -> str:
    """Everything a message's payload says (body, attachments, archives), for matching.

    What could not be read is in ``read_content(payload).unreadable``.
    """
    return read_content(payload).text

"""One transaction for a change that queues notices: the notices' spool files are written
before the commit, so a rolled-back try removes those it wrote.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from sqlalchemy.orm import Session

from relay.core.database import Database
from relay.core.spool import Spool

T = TypeVar("T")


class _TrackingSpool(Spool):
    """A view of the spool that remembers what it wrote, to undo it on a rollback."""

    def __init__(self, spool: Spool) -> None:
        super().__init__(spool.root)
        self.written: list[str] = []

    def write(self, message_id: str, name: str, data: bytes) -> Path:
        self.written.append(message_id)
        return super().write(message_id, name, data)


def in_transaction(db: Database, spool: Spool, work: Callable[[Session, Spool], T]) -> T:
    """Run `work` in one transaction; spool files of a rolled-back try are removed.

    For every change that queues notices (spool files) in the same transaction."""
    tracking = _TrackingSpool(spool)
    try:
        with db.transaction() as session:
            return work(session, tracking)
    except BaseException:
        for message_id in dict.fromkeys(tracking.written):
            spool.remove(message_id)
        raise

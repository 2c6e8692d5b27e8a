"""One transaction for a change that queues notices: the notices' texts are written in it
(relay/store/spool.py), so a rolled-back try leaves none behind.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from sqlalchemy.orm import Session

from relay.core.database import Database
from relay.store.spool import Spool

T = TypeVar("T")


def in_transaction(db: Database, spool: Spool, work: Callable[[Session, Spool], T]) -> T:
    """Run `work` in one transaction, with the spool it writes its notices to."""
    with db.transaction() as session:
        return work(session, spool)

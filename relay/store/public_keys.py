"""Members', senders' and grant holders' public keys in the database, which every node's
keyring follows: the keyrings are per node, the database is shared.

Each import of such a key also stores it here as gpg exports it (`store`, in the caller's
transaction), revocations included. Each node imports what changed since it last looked
(`follow`): everything at start, then every `[embargo] check_interval`. gpg only merges
what it imports into what it holds, so a revocation, once in any copy, stays. `backfill`
copies in the keys of an installation older than the table (relay/store/at_rest.py).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from relay.core.crypto import Crypto
from relay.core.database import Database
from relay.model import Grant, MemberKey, PublicKey, SenderKey, utcnow

# `updated_at` is the writer's clock at the change, not the commit's: a row committed late,
# or written by a node whose clock lags, can carry a time a follower already passed. So
# `follow` imports the keys of this long before `since` again (an import is idempotent).
SETTLE = timedelta(minutes=5)


def store(
    session: Session, crypto: Crypto, fingerprints: Iterable[str], now: datetime | None = None
) -> None:
    """Store these keys as `crypto`'s keyring exports them now, in the caller's transaction."""
    rows = [
        {"fingerprint": fpr, "data": crypto.export_public(fpr), "updated_at": now or utcnow()}
        for fpr in dict.fromkeys(fingerprints)
    ]
    if not rows:
        return
    # One statement that inserts or replaces: two nodes storing one key at once both succeed.
    insert = postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert
    statement = insert(PublicKey).values(rows)
    session.execute(
        statement.on_conflict_do_update(
            index_elements=[PublicKey.fingerprint],
            set_={"data": statement.excluded.data, "updated_at": statement.excluded.updated_at},
        )
    )


def follow(db: Database, crypto: Crypto, since: datetime | None) -> tuple[int, datetime | None]:
    """Import into `crypto`'s keyring every key updated after `since` (every key when None).

    Returns how many were, and the newest `updated_at` seen (`since` when none is newer),
    to give as `since` next time. Keys of the `SETTLE` before `since` are imported again."""
    query = select(PublicKey.data, PublicKey.updated_at).order_by(PublicKey.updated_at)
    if since is not None:
        query = query.where(PublicKey.updated_at > since - SETTLE)
    with db.transaction() as session:
        rows = session.execute(query).all()
    if not rows:
        return 0, since
    crypto.import_keys(b"\n".join(data for data, _ in rows))  # one gpg import for all
    newer = [at for _, at in rows if since is None or at > since]
    return len(newer), max(newer, default=since)


def backfill(db: Database, crypto: Crypto) -> int:
    """Store the keys an older installation held only in its keyring: those a member, a
    sender or a grant names, present in `crypto`'s keyring, missing from the table."""
    with db.transaction() as session:
        named = set(session.scalars(select(MemberKey.fingerprint)))
        named |= set(session.scalars(select(SenderKey.fingerprint)))
        for fingerprints in session.scalars(select(Grant.fingerprints)):
            named |= set(fingerprints or [])
        named -= set(session.scalars(select(PublicKey.fingerprint)))
        if not named:
            return 0
        held = {k.fingerprint for k in crypto.list_keys() if not k.secret}
        missing = sorted(named & held)
        store(session, crypto, missing)
    return len(missing)

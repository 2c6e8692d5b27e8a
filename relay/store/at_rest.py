"""What a migration cannot do without the list key or the keyring, done by `relay init` and
at the start of `relay serve`: seal the embargoed text written before sealing existed, move
the files of an old spool folder into the database, and copy the keys an older keyring held
alone into the table every node follows (relay/store/public_keys.py). Each is idempotent
and cheap when done."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from sqlalchemy import text, update

from relay.core.crypto import Crypto
from relay.core.database import Database
from relay.core.logs import event
from relay.core.sealing import TEXT_PREFIX
from relay.model import Advisory, AuditEvent, Contribution, Incident, Message
from relay.store import public_keys
from relay.store.spool import Spool, import_folder

log = logging.getLogger("relay.at_rest")

# Every sealed text column: (model, column, is JSON).
SEALED_COLUMNS: tuple[tuple[Any, str, bool], ...] = (
    (Message, "subject", False),
    (Advisory, "title", False),
    (Advisory, "public_text", False),
    (Incident, "matched", True),
    (Incident, "note", False),
    (Incident, "resolution", False),
    (Contribution, "text", False),
    (AuditEvent, "detail", True),
)


def seal_plaintext(db: Database) -> int:
    """Seal every value of a sealed column still stored in the clear; the number sealed."""
    sealed = 0
    for model, column, is_json in SEALED_COLUMNS:
        table = model.__table__
        (key,) = table.primary_key.columns
        with db.transaction() as session:
            rows = session.execute(
                text(
                    f"SELECT {key.name}, {column} FROM {table.name} "
                    f"WHERE {column} IS NOT NULL AND {column} NOT LIKE :sealed"
                ),
                {"sealed": TEXT_PREFIX + "%"},
            ).all()
            for row_key, value in rows:
                plain = json.loads(value) if is_json and isinstance(value, str) else value
                session.execute(
                    update(model).where(getattr(model, key.name) == row_key).values({column: plain})
                )
            sealed += len(rows)
    return sealed


def upgrade(db: Database, spool: Spool, spool_folder: Path, crypto: Crypto) -> None:
    """Seal what is plain, move an old spool folder in (needs the data key attached) and
    store the keys only `crypto`'s keyring held."""
    moved = import_folder(db, spool, spool_folder)
    sealed = seal_plaintext(db)
    if moved or sealed:
        event(log, "sealed at rest", spool_messages_moved=moved, values_sealed=sealed)
    stored = public_keys.backfill(db, crypto)
    if stored:
        event(log, "public keys stored", keys=stored)

"""The spool: every accepted message's bytes, in the database (`message_bodies`), sealed.

A message's parts ("raw" as received, "payload" as redistributed) are written in the
transaction that creates its row, so the commit before `250` is the one durable point: a
rolled-back try leaves nothing behind, any node can deliver any message, and no folder is
shared. Each part is sealed under the database's data key (relay/core/sealing.py): a dump
or a backup without the relay's keyring holds no embargoed text.

Before the database held them, parts were files under `[storage] spool_dir`;
`import_folder` moves such a spool into the database (relay/store/at_rest.py runs it).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from relay.core.database import Database
from relay.model import Message, MessageBody

RAW = "raw"  # the message exactly as received
PAYLOAD = "payload"  # the verified content the relay redistributes
PARTS = (RAW, PAYLOAD)


class MissingPart(LookupError):
    """A message part the spool does not hold."""


class Spool:
    """Reads and writes message parts; writes only inside the caller's transaction."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def write(self, session: Session, message_id: str, part: str, data: bytes) -> None:
        """Store a part of a message whose row is in `session` (written first: the parts
        refer to it)."""
        if part not in PARTS:
            raise ValueError(f"unknown message part {part!r}")
        session.flush()
        session.merge(MessageBody(message_id=message_id, part=part, data=bytes(data)))

    def read(self, message_id: str, part: str, session: Session | None = None) -> bytes:
        if session is None:
            with self.db.transaction() as own:
                return self.read(message_id, part, own)
        data = session.scalar(
            select(MessageBody.data).where(
                MessageBody.message_id == message_id, MessageBody.part == part
            )
        )
        if data is None:
            raise MissingPart(f"message {message_id} has no {part} in the spool")
        return data

    def remove(self, session: Session, message_id: str) -> None:
        session.execute(delete(MessageBody).where(MessageBody.message_id == message_id))


def import_folder(db: Database, spool: Spool, root: Path) -> int:
    """Move the files of a spool folder (`root/ab/<id>/<part>`) into the database, one
    message per transaction; files of messages the database does not know are left. The
    number of messages moved."""
    if not root.is_dir():
        return 0
    moved = 0
    for folder in sorted(p for p in root.glob("??/*") if p.is_dir() and p.name.isalnum()):
        with db.transaction() as session:
            if session.get(Message, folder.name) is None:
                continue
            for part in PARTS:
                path = folder / part
                if path.is_file():
                    spool.write(session, folder.name, part, path.read_bytes())
        shutil.rmtree(folder)
        moved += 1
    return moved

"""The data keys of one database: made once (by `relay init`, or the first node to open a
database without one), kept only wrapped to the list key, unwrapped by each process that
opens the database with the list's secret key.

A process keeps what it unwrapped in memory (`_unwrapped`), so opening the same database
again (the CLI's commands, a test's second handle) costs no further gpg call.
"""

from __future__ import annotations

import hashlib
import logging

from sqlalchemy import select

from relay.core.crypto import Crypto
from relay.core.database import Database
from relay.core.errors import CryptoError
from relay.core.logs import event
from relay.core.sealing import KEY_BYTES, KEY_ID_BYTES, Sealer, SealingError, attach, new_key
from relay.model.data_keys import DataKey

log = logging.getLogger("relay.data_keys")

_unwrapped: dict[bytes, bytes] = {}  # sha256 of a wrapped key -> the key


def present(db: Database) -> bool:
    """The database has a data key: a relay, with its list key, already uses it."""
    with db.transaction() as session:
        return session.scalar(select(DataKey.id).limit(1)) is not None


def ensure(db: Database, crypto: Crypto, list_fingerprint: str) -> bool:
    """Make the database's first data key unless it has one; True if one was made."""
    if present(db):
        return False
    key_id, key = new_key()
    wrapped = crypto.encrypt(key_id + key, [list_fingerprint])
    with db.transaction() as session:
        # Two processes making the first key at once: the primary key keeps one of each,
        # and both stay usable, so neither loses what it sealed.
        session.add(DataKey(id=key_id.hex(), wrapped=wrapped))
    event(log, "data key made", key=key_id.hex()[:8])
    return True


def unwrap(db: Database, crypto: Crypto) -> Sealer:
    """Every data key of the database, the newest current; attached to its engine."""
    sealer = Sealer(reload=lambda found: _load(db, crypto, found))
    _load(db, crypto, sealer)
    attach(db.engine, sealer)
    return sealer


def check_opens(db: Database, crypto: Crypto) -> int:
    """Open every data key with `crypto` itself, past this process's memory of them (a
    keyring about to replace another must open them on its own); how many there are."""
    with db.transaction() as session:
        rows = session.scalars(select(DataKey.wrapped)).all()
    for wrapped in rows:
        try:
            blob = crypto.decrypt(wrapped).plaintext
        except CryptoError as error:
            raise SealingError(f"a data key does not open with this keyring: {error}") from None
        if len(blob) != KEY_ID_BYTES + KEY_BYTES:
            raise SealingError("a data key in the database is malformed")
    return len(rows)


def rewrap(db: Database, old: Crypto, new: Crypto, list_fingerprint: str) -> int:
    """Wrap every data key again, by `new`, to the list key: an encryption one backend made
    may be one the other cannot read (Sequoia uses SEIPDv2 where the key allows it, which
    GnuPG 2.2 does not read). Each new wrapping is checked to open before it replaces the
    old one; all rows change in one transaction or none. How many there are."""
    with db.transaction() as session:
        rows = session.scalars(select(DataKey).with_for_update()).all()
        for row in rows:
            try:
                blob = old.decrypt(row.wrapped).plaintext
                wrapped = new.encrypt(blob, [list_fingerprint])
                reopened = new.decrypt(wrapped).plaintext
            except CryptoError as error:
                raise SealingError(
                    f"data key {row.id[:8]} cannot be wrapped again: {error}"
                ) from None
            if reopened != blob:
                raise SealingError(
                    f"data key {row.id[:8]} does not open the same when wrapped again"
                )
            row.wrapped = wrapped
    return len(rows)


def _load(db: Database, crypto: Crypto, sealer: Sealer) -> None:
    with db.transaction() as session:
        rows = session.execute(select(DataKey.wrapped).order_by(DataKey.created_at)).all()
    if not rows:
        raise SealingError("the database has no data key yet; run 'relay init'")
    for (wrapped,) in rows:
        digest = hashlib.sha256(wrapped).digest()
        blob = _unwrapped.get(digest)
        if blob is None:
            try:
                blob = crypto.decrypt(wrapped).plaintext
            except CryptoError as error:
                raise SealingError(f"a data key does not open with the list key: {error}") from None
            _unwrapped[digest] = blob
        if len(blob) != KEY_ID_BYTES + KEY_BYTES:
            raise SealingError("a data key in the database is malformed")
        sealer.add(blob[:KEY_ID_BYTES], blob[KEY_ID_BYTES:], current=True)

"""What the console's requests share (`Console`): the settings, the database, the keyring
and the spool, opened once when the console starts and closed when it stops."""

from __future__ import annotations

from dataclasses import dataclass

from relay.app import admin
from relay.core.config import Settings
from relay.core.crypto import Crypto
from relay.core.database import Database
from relay.store.spool import Spool


@dataclass
class Console:
    settings: Settings
    db: Database
    crypto: Crypto
    spool: Spool

    @classmethod
    def open(cls, settings: Settings) -> Console:
        """Open what the console needs; refused on a database `relay init` has not set up."""
        db = admin.open_database(settings)
        try:
            admin.require_schema(db)
            crypto = admin.open_keyring(settings)
            admin.unseal(db, crypto)
        except BaseException:
            db.dispose()
            raise
        return cls(settings, db, crypto, Spool(db))

    def close(self) -> None:
        self.db.dispose()
        # gpg-agent would outlive the console with the list key's secret in its memory.
        self.crypto.close()

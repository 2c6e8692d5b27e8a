"""A new node for the relay: the list's secret key carried to it, never in the clear.

A node is one more `relay serve` on the shared database, with a keyring of its own. It
needs the list key (to sign copies and to open the database's data keys); members' and
senders' keys reach it from the database by themselves (relay/store/public_keys.py).
`export_list_key` writes the list key, encrypted under a passphrase by gpg, to a new file
of mode 0600; `import_list_key` takes it into the new node's home, before `relay init`
would make a list key of its own, and checks that it opens the database. Both are audited.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path

from relay.app import admin
from relay.core.config import Settings
from relay.core.crypto import Crypto
from relay.core.database import Database
from relay.core.errors import RelayError
from relay.core.sealing import SealingError
from relay.store import audit, data_keys, key_owners

# The file travels between machines; its passphrase is all that protects the list key.
MIN_PASSPHRASE = 12


@dataclass(frozen=True)
class KeyTransfer:
    fingerprint: str
    path: Path
    already_present: bool = False


def export_list_key(
    db: Database, crypto: Crypto, settings: Settings, target: Path, passphrase: str, actor: str
) -> KeyTransfer:
    """Write the list's secret key to the new file `target`, encrypted under `passphrase`."""
    if len(passphrase) < MIN_PASSPHRASE:
        raise RelayError(f"the passphrase must have at least {MIN_PASSPHRASE} characters")
    fingerprint = key_owners.list_key(crypto).fingerprint
    _write_new(target, crypto.export_secret_key(fingerprint, passphrase))
    try:
        with db.transaction() as session:
            audit.record(
                session,
                actor,
                "list.key_exported",
                settings.list.address,
                fingerprint=fingerprint,
                file=str(target),
                host=socket.gethostname(),
            )
    except Exception:
        target.unlink(missing_ok=True)  # no export without its audit row
        raise
    return KeyTransfer(fingerprint, target)


def import_list_key(settings: Settings, data: bytes, passphrase: str, actor: str) -> KeyTransfer:
    """Import the list key from what `export_list_key` wrote into this node's keyring."""
    db = admin.open_database(settings)
    try:
        if not db.is_current() or not data_keys.present(db):
            raise RelayError(
                "no running relay uses this database (storage.database_url) yet: a new node"
                " joins the database of the relay whose key it imports"
            )
        crypto = admin.open_keyring(settings)
        before = {k.fingerprint for k in crypto.list_keys() if k.secret}
        fingerprint = crypto.import_secret_key(data, passphrase)
        try:
            admin.unseal(db, crypto)
        except SealingError:
            raise RelayError(
                f"key {fingerprint} does not open this database's data keys: it is not the"
                f" list key of the relay using it; {_removal(settings, fingerprint)}"
            ) from None
        with db.transaction() as session:
            audit.record(
                session,
                actor,
                "list.key_imported",
                settings.list.address,
                fingerprint=fingerprint,
                host=socket.gethostname(),
                already_present=fingerprint in before,
            )
        return KeyTransfer(fingerprint, settings.gnupg.keyring_path, fingerprint in before)
    finally:
        db.dispose()


def _removal(settings: Settings, fingerprint: str) -> str:
    if settings.gnupg.backend == "sequoia":
        folder = settings.gnupg.keyring
        return f"remove {folder}/secret/{fingerprint}.pgp and {folder}/certs/{fingerprint}.pgp"
    return (
        f"remove it with 'gpg --homedir {settings.gnupg.home}"
        f" --delete-secret-and-public-key {fingerprint}'"
    )


def _write_new(target: Path, data: bytes) -> None:
    """A new file readable by its owner only; an existing file is never overwritten."""
    try:
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise RelayError(f"{target} exists; the key is written to a new file only") from None
    except OSError as exc:
        raise RelayError(f"cannot create {target}: {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "wb") as out:
            os.fchmod(out.fileno(), 0o600)  # whatever the umask
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
    except OSError as exc:
        target.unlink(missing_ok=True)
        raise RelayError(f"cannot write {target}: {exc.strerror or exc}") from None

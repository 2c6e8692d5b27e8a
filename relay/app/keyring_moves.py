"""Moving the relay's keys from one backend's keyring to the other's (`relay keyring
migrate --to sequoia|gnupg`): GnuPG home to Sequoia keyring folder, or back.

The list's secret key crosses in memory only, encrypted under a one-time random
passphrase (the same form `relay node export-key` writes), into a keyring that holds no
other secret key. The public keys follow. The move counts as done only when the new keyring,
on its own, opens every data key of the database and makes a signature the old keyring
checks as the list key's. The old keyring is left as it was, so going back needs no second
move; the configuration is the administrator's to change (`[gnupg] backend`).
"""

from __future__ import annotations

import secrets
import socket
from dataclasses import dataclass
from pathlib import Path

from relay.app import admin
from relay.core import keyrings
from relay.core.config import Backend, Settings
from relay.core.crypto import Crypto
from relay.core.database import Database
from relay.core.errors import KeyProblem, RelayError
from relay.core.sealing import SealingError
from relay.store import audit, data_keys, key_owners


@dataclass(frozen=True)
class KeyringMove:
    source: Backend
    target: Backend
    source_path: Path
    target_path: Path
    fingerprint: str
    public_keys: int  # certificates copied (the list key's included)
    refused: tuple[tuple[str, str], ...]  # (fingerprint, why) the new keyring would not take
    data_keys: int


def move_keyring(settings: Settings, target: Backend, actor: str) -> KeyringMove:
    """Copy the list key and the public keys from the other backend's keyring to `target`'s."""
    source: Backend = "sequoia" if target == "gnupg" else "gnupg"
    old_settings = settings.gnupg.model_copy(update={"backend": source})
    new_settings = settings.gnupg.model_copy(update={"backend": target})
    db = admin.open_database(settings)
    try:
        admin.require_schema(db)
        old = keyrings.open_keyring(old_settings)
        new = keyrings.open_keyring(new_settings)
        try:
            fingerprint = key_owners.list_key(old).fingerprint
        except KeyProblem as exc:
            raise RelayError(f"the {source} keyring ({old_settings.keyring_path}): {exc}") from None
        others = sorted(k.fingerprint for k in new.list_keys() if k.secret)
        if set(others) - {fingerprint}:
            raise RelayError(
                f"the {target} keyring ({new_settings.keyring_path}) already holds another"
                f" secret key ({', '.join(others)}); it can hold the list key only"
            )
        try:  # before anything is written: a key that is not this database's stays put
            data_keys.check_opens(db, old)
        except SealingError as exc:
            raise RelayError(
                f"the {source} keyring's list key does not open the database: {exc}"
            ) from None
        one_time = secrets.token_urlsafe(32)
        new.import_secret_key(old.export_secret_key(fingerprint, one_time), one_time)
        copied, refused = _copy_public_keys(old, new)
        opened = _check(db, old, new, fingerprint)
        admin.unseal(db, new)  # the audit row is sealed
        with db.transaction() as session:
            audit.record(
                session,
                actor,
                "list.keyring_moved",
                settings.list.address,
                fingerprint=fingerprint,
                source=source,
                target=target,
                public_keys=copied,
                refused=len(refused),
                host=socket.gethostname(),
            )
        return KeyringMove(
            source,
            target,
            old_settings.keyring_path,
            new_settings.keyring_path,
            fingerprint,
            copied,
            tuple(refused),
            opened,
        )
    finally:
        db.dispose()


def _copy_public_keys(old: Crypto, new: Crypto) -> tuple[int, list[tuple[str, str]]]:
    """Every certificate of the old keyring into the new one, one by one: a key the new
    backend refuses is named, and the rest still move."""
    copied = 0
    refused: list[tuple[str, str]] = []
    for key in old.list_keys():
        try:
            new.import_keys(old.export_public(key.fingerprint))
        except RelayError as exc:
            refused.append((key.fingerprint, str(exc)))
            continue
        copied += 1
    return copied, refused


def _check(db: Database, old: Crypto, new: Crypto, fingerprint: str) -> int:
    """The new keyring opens the data keys (wrapped again if need be) and signs as the list
    key, by itself."""
    try:
        opened = data_keys.check_opens(db, new)
    except SealingError:
        # Wrapped by the other backend in a form this one cannot read: wrap them again.
        try:
            data_keys.rewrap(db, old, new, fingerprint)
            opened = data_keys.check_opens(db, new)
        except SealingError as exc:
            raise RelayError(f"the moved key does not open the database: {exc}") from None
    probe = b"relay keyring migrate: a signature made by the new keyring\r\n"
    signature, _ = new.sign_detached(probe, fingerprint)
    verdict = old.verify_detached(probe, signature)
    if not verdict.valid or verdict.fingerprint != fingerprint:
        raise RelayError(
            f"the new keyring's signature does not check as the list key's: {verdict.reason}"
        )
    return opened

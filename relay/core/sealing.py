"""Encryption at rest: what the database holds of embargoed text is sealed under a data key.

A data key is 32 random bytes for AES-256-GCM (the `cryptography` package, over OpenSSL).
The database holds data keys only wrapped, OpenPGP-encrypted to the list key (the
`data_keys` table, relay/store/data_keys.py), so a dump or a backup without the relay's
keyring reveals no embargoed text, and every node that holds the list's secret key unwraps
the same keys when it opens the database.

A sealed value is ``MAGIC | key id (16 bytes) | nonce (12 bytes) | ciphertext and tag``.
The column it belongs to is the associated data: a sealed subject pasted into a body column
does not open. Columns declare themselves sealed with `SealedBytes`, `SealedText` or
`SealedJSON`; the sealer is found through the engine's dialect (each engine has its own), so
two databases in one process keep their own keys. Text columns hold the sealed value in
base64 behind `TEXT_PREFIX`, so a plaintext row written before sealing existed is told apart
(and read as it is, until `relay init` or the start of `relay serve` reseals it).
"""

from __future__ import annotations

import base64
import json
import os
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import Engine, LargeBinary, Text
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator

from relay.core.errors import RelayError

MAGIC = b"ERS1"
TEXT_PREFIX = "sealed:"
KEY_BYTES = 32
KEY_ID_BYTES = 16
NONCE_BYTES = 12
_HEAD = len(MAGIC) + KEY_ID_BYTES + NONCE_BYTES


class SealingError(RelayError):
    """A sealed value could not be sealed or opened (no key loaded, wrong key, tampered)."""


def new_key() -> tuple[bytes, bytes]:
    """A fresh data key and its id."""
    return os.urandom(KEY_ID_BYTES), AESGCM.generate_key(bit_length=8 * KEY_BYTES)


@dataclass
class Sealer:
    """The data keys of one database; seals under the newest, opens under any."""

    keys: dict[bytes, bytes] = field(default_factory=dict)  # key id -> key
    current: bytes | None = None  # the id new values are sealed under
    # Called once when a value names a key this sealer lacks: another node made it since.
    reload: Callable[[Sealer], None] | None = None

    def add(self, key_id: bytes, key: bytes, *, current: bool = False) -> None:
        if len(key_id) != KEY_ID_BYTES or len(key) != KEY_BYTES:
            raise SealingError("a data key must be 32 bytes with a 16-byte id")
        self.keys[key_id] = key
        if current or self.current is None:
            self.current = key_id

    def seal(self, plain: bytes, purpose: str) -> bytes:
        if self.current is None:
            raise SealingError("no data key is loaded: embargoed text cannot be stored")
        nonce = os.urandom(NONCE_BYTES)
        sealed = AESGCM(self.keys[self.current]).encrypt(nonce, plain, purpose.encode())
        return MAGIC + self.current + nonce + sealed

    def open(self, sealed: bytes, purpose: str) -> bytes:
        if len(sealed) < _HEAD + 16 or not sealed.startswith(MAGIC):
            raise SealingError(f"not a sealed value ({purpose})")
        key_id = sealed[len(MAGIC) : len(MAGIC) + KEY_ID_BYTES]
        if key_id not in self.keys and self.reload is not None:
            self.reload(self)
        key = self.keys.get(key_id)
        if key is None:
            raise SealingError(f"sealed under a data key this relay does not hold ({purpose})")
        nonce = sealed[len(MAGIC) + KEY_ID_BYTES : _HEAD]
        try:
            return AESGCM(key).decrypt(nonce, sealed[_HEAD:], purpose.encode())
        except InvalidTag:
            raise SealingError(
                f"a sealed value does not open: altered or moved ({purpose})"
            ) from None

    def seal_text(self, plain: str, purpose: str) -> str:
        return TEXT_PREFIX + base64.b64encode(self.seal(plain.encode(), purpose)).decode()

    def open_text(self, stored: str, purpose: str) -> str:
        if not is_sealed_text(stored):
            return stored  # written before sealing; resealed at the next start
        return self.open(base64.b64decode(stored[len(TEXT_PREFIX) :]), purpose).decode()


def is_sealed_text(stored: str) -> bool:
    return stored.startswith(TEXT_PREFIX)


# Each engine has its own dialect object: the sealer of a database hangs on it.
_SEALERS: weakref.WeakKeyDictionary[Dialect, Sealer] = weakref.WeakKeyDictionary()


def attach(engine: Engine, sealer: Sealer) -> None:
    """Seal and open this engine's sealed columns with `sealer`."""
    _SEALERS[engine.dialect] = sealer


def sealer_for(dialect: Dialect) -> Sealer:
    sealer = _SEALERS.get(dialect)
    if sealer is None:
        raise SealingError("the database's data key is not loaded (open it with the list key)")
    return sealer


class SealedBytes(TypeDecorator[bytes]):
    """Bytes sealed in a binary column."""

    impl = LargeBinary
    cache_ok = True

    def __init__(self, purpose: str) -> None:
        super().__init__()
        self.purpose = purpose

    def process_bind_param(self, value: bytes | None, dialect: Dialect) -> bytes | None:
        return None if value is None else sealer_for(dialect).seal(bytes(value), self.purpose)

    def process_result_value(self, value: Any, dialect: Dialect) -> bytes | None:
        return None if value is None else sealer_for(dialect).open(bytes(value), self.purpose)


class SealedText(TypeDecorator[str]):
    """Text sealed in a text column (base64 behind a prefix)."""

    impl = Text
    cache_ok = True

    def __init__(self, purpose: str) -> None:
        super().__init__()
        self.purpose = purpose

    def process_bind_param(self, value: str | None, dialect: Dialect) -> str | None:
        return None if value is None else sealer_for(dialect).seal_text(value, self.purpose)

    def process_result_value(self, value: str | None, dialect: Dialect) -> str | None:
        return None if value is None else sealer_for(dialect).open_text(value, self.purpose)


class SealedJSON(TypeDecorator[Any]):
    """A JSON value sealed in a text column."""

    impl = Text
    cache_ok = True

    def __init__(self, purpose: str) -> None:
        super().__init__()
        self.purpose = purpose

    def process_bind_param(self, value: Any, dialect: Dialect) -> str | None:
        if value is None:
            return None
        return sealer_for(dialect).seal_text(json.dumps(value), self.purpose)

    def process_result_value(self, value: Any, dialect: Dialect) -> Any:
        if value is None:
            return None
        if not isinstance(value, str):  # a JSON column before sealing, decoded by the driver
            return value
        return json.loads(sealer_for(dialect).open_text(value, self.purpose))

"""OpenPGP for the relay, behind one small interface (`Crypto`) and its value types.

Two backends implement it: relay/core/gpg.py (python-gnupg over the real GnuPG binary) and
relay/core/sequoia.py (pysequoia, in-process); relay/core/keyrings.py opens the one
`[gnupg] backend` names, and no detail of either leaves its module. Signers are identified by
their primary-key fingerprint (never by a user ID), keys are never fetched from the
network, and every failure raises `CryptoError`: the caller must hold the message, never
fall back to plaintext.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from email.utils import parseaddr
from typing import Protocol

from relay.core.errors import KeyProblem

MIN_RSA_BITS = 2048


@dataclass(frozen=True)
class KeyInfo:
    """What the relay needs to know about one OpenPGP key."""

    fingerprint: str
    uids: tuple[str, ...]
    algorithm: str
    bits: int
    created_at: datetime
    expires_at: datetime | None
    revoked: bool
    expired: bool
    can_encrypt: bool  # has a valid, unexpired, unrevoked encryption subkey
    secret: bool = False

    @property
    def problem(self) -> str | None:
        """Why this key cannot be used to encrypt, or None when it can."""
        if self.revoked:
            return "key is revoked"
        if self.expired:
            return "key has expired"
        if not self.can_encrypt:
            return "key has no usable encryption subkey"
        if self.algorithm == "RSA" and self.bits < MIN_RSA_BITS:
            return f"RSA key of {self.bits} bits is too weak (at least {MIN_RSA_BITS} required)"
        return None


@dataclass(frozen=True)
class Signature:
    """The verdict on one signed object, from gpg's status lines alone."""

    valid: bool
    fingerprint: str | None  # primary-key fingerprint of the signer, when known
    reason: str  # why it is not valid ("" when valid)
    code: str = ""  # the status keyword that decided (GOODSIG, BADSIG, EXPKEYSIG ...)
    created_at: datetime | None = None  # the signature's own creation time (VALIDSIG)


@dataclass(frozen=True)
class Decrypted:
    plaintext: bytes
    signature: Signature | None  # present when the ciphertext was also signed
    recipients: tuple[str, ...] = field(default_factory=tuple)  # ENC_TO key ids


class Crypto(Protocol):
    """Everything the relay asks of OpenPGP."""

    def import_keys(self, data: bytes) -> list[str]: ...
    def inspect_keys(self, data: bytes) -> list[KeyInfo]: ...
    def key_info(self, fingerprint: str) -> KeyInfo | None: ...
    def list_keys(self) -> list[KeyInfo]: ...
    def export_public(self, fingerprint: str) -> bytes: ...
    # The key as published: minimal (no third-party signatures), maybe narrowed (gpg.py).
    def export_public_key(
        self,
        fingerprint: str,
        *,
        address: str | None = None,
        only_encryption_subkeys: bool = False,
        armor: bool = False,
    ) -> bytes: ...
    def generate_key(self, name: str, address: str) -> str: ...
    def export_secret_key(self, fingerprint: str, passphrase: str) -> bytes: ...
    def import_secret_key(self, data: bytes, passphrase: str) -> str: ...
    def verify_detached(self, data: bytes, signature: bytes) -> Signature: ...
    def verify_cleartext(self, data: bytes) -> tuple[Signature, bytes]: ...
    def decrypt(self, data: bytes) -> Decrypted: ...
    def sign_encrypt(self, data: bytes, recipients: Iterable[str], signer: str) -> bytes: ...
    def sign_detached(self, data: bytes, signer: str) -> tuple[bytes, str]: ...
    def encrypt(self, data: bytes, recipients: Iterable[str]) -> bytes: ...
    # Stop what the backend started (gpg-agent holds the list key in memory).
    def close(self) -> None: ...
    # How a crypto worker process opens this keyring again (relay/runners/crypto_workers.py):
    # picklable, and carrying any passphrase through the worker's pipe only.
    def worker_opener(self) -> Callable[[], Crypto]: ...


def exportable(
    info: KeyInfo | None, fingerprint: str, address: str | None, only_encryption_subkeys: bool
) -> KeyInfo:
    """The key `export_public_key` may publish, or KeyProblem saying why not (every
    backend refuses the same way)."""
    if info is None:
        raise KeyProblem(f"no key {fingerprint} in the keyring")
    if address is not None and not any(
        parseaddr(uid)[1].lower() == address.lower() for uid in info.uids
    ):
        raise KeyProblem(f"key {info.fingerprint} has no user ID for {address}")
    if only_encryption_subkeys and not info.can_encrypt:
        raise KeyProblem(f"key {info.fingerprint} has no usable encryption subkey")
    return info

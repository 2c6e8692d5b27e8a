"""`Crypto` in-process over pysequoia (Sequoia-PGP), in one keyring folder.

The folder holds `certs/` (one binary certificate per file, named by its fingerprint and
replaced atomically on a merge) and `secret/` (each secret key of the list in a file of its
own, created once with mode 0600 and never rewritten; with a passphrase, the file is an
OpenPGP message encrypted under it, the same form `export_secret_key` writes). Writers
take `lock` in turn and leave a new token in `generation`, which tells every other process
on the folder to read it again. Nothing is fetched from the network.

Verdicts and key descriptions follow gpg.py, including gpg's rules that Sequoia does not
apply by itself: a signature by a key that has expired since it was made is refused, and an
expired or revoked certificate is never encrypted to (pysequoia's encrypt would fall back to
its expired subkeys). Where pysequoia 0.1.35 cannot tell what gpg tells (a signature inside
an encrypted message: its creation time; inside compressed data: at all), the verdict is a
refusal that says so, never a guess.
"""

from __future__ import annotations

import fcntl
import functools
import os
import re
import resource
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pysequoia
from pysequoia.packet import Packet, PacketPile, SignatureType, Tag

from relay.core.crypto import Decrypted, KeyInfo, Signature, exportable
from relay.core.errors import CryptoError, KeyProblem

# pysequoia raises RuntimeError for what Sequoia refuses; ValueError for input it cannot take.
_REFUSED = (RuntimeError, ValueError)

# Sequoia's algorithm names, as gpg.py names them for KeyInfo.algorithm.
_ALGORITHMS = {
    "RSAEncryptSign": "RSA",
    "RSAEncrypt": "RSA",
    "RSASign": "RSA",
    "ElGamalEncrypt": "ElGamal",
    "ElGamalEncryptSign": "ElGamal",
    "DSA": "DSA",
    "ECDH": "ECDH",
    "ECDSA": "ECDSA",
    "EdDSA": "EdDSA",
    "X25519": "X25519",
    "X448": "X448",
    "Ed25519": "Ed25519",
    "Ed448": "Ed448",
}
_MPI_ALGORITHMS = {"RSA", "DSA", "ElGamal"}
# Key sizes gpg reports for elliptic curves, by the curve's OID (RFC 9580 §9.2).
_CURVE_BITS = {
    "2b06010401da470f01": 255,  # Ed25519 (legacy EdDSA)
    "2b060104019755010501": 255,  # Curve25519 (legacy ECDH)
    "2a8648ce3d030107": 256,  # NIST P-256
    "2b81040022": 384,  # NIST P-384
    "2b81040023": 521,  # NIST P-521
}
_NATIVE_BITS = {"X25519": 255, "Ed25519": 255, "X448": 448, "Ed448": 448}
# RFC 3156 micalg names of the hash algorithms, by Sequoia's names.
_MICALG = {
    "MD5": "pgp-md5",
    "SHA1": "pgp-sha1",
    "RipeMD": "pgp-ripemd160",
    "SHA224": "pgp-sha224",
    "SHA256": "pgp-sha256",
    "SHA384": "pgp-sha384",
    "SHA512": "pgp-sha512",
}
# pysequoia's enums compare but do not hash: tuples, not sets.
_KEY_TAGS = (Tag.PublicKey, Tag.PublicSubkey, Tag.SecretKey, Tag.SecretSubkey)
_ARMOUR = re.compile(rb"-----BEGIN PGP [A-Z ]+-----.*?-----END PGP [A-Z ]+-----", re.DOTALL)
_LISTING_SECONDS = 60  # as gpg.py: a key's description is cached at most this long


def _name(value: object) -> str:
    """An enum member's own name: `PublicKeyAlgorithm.EdDSA` -> `EdDSA`."""
    return str(value).rsplit(".", 1)[-1]


def _first_line(exc: BaseException) -> str:
    """pysequoia's message without the Rust backtrace it appends."""
    return (str(exc).strip().splitlines() or ["unknown error"])[0]


def _packets(data: bytes) -> list[Packet]:
    """The packets of the first OpenPGP block in `data`; none when it holds none."""
    try:
        return list(PacketPile.from_bytes(data))
    except _REFUSED:
        return []


def _bits(key: Packet, algorithm: str) -> int:
    """The key size as gpg reports it, read from the key packet (RFC 9580 §5.5.2)."""
    body = key.body
    start = 6 if body[:1] == b"\x04" else 10  # v4; v5 and v6 add a 4-byte material length
    if algorithm in _MPI_ALGORITHMS:
        return int.from_bytes(body[start : start + 2], "big")  # first MPI's bit count
    if algorithm in _NATIVE_BITS:
        return _NATIVE_BITS[algorithm]
    length = body[start] if len(body) > start else 0
    return _CURVE_BITS.get(body[start + 1 : start + 1 + length].hex(), 0)


def _now() -> datetime:
    return datetime.now(UTC)


def _one_line(passphrase: str) -> None:
    # gpg.py cannot take a passphrase with a line break: a key file must move between both.
    if "\n" in passphrase or "\r" in passphrase:
        raise CryptoError("the passphrase must be one line")


@dataclass
class _Lookup:
    """pysequoia's certificate store callback: the keyring's certificates for the key
    handles a signature names (fingerprint or key ID, of a primary key or a subkey), and a
    record of what it was asked and found."""

    index: dict[str, str]  # lower-case key handle -> primary fingerprint
    certs: dict[str, pysequoia.Cert]
    asked: tuple[str, ...] = ()
    found: tuple[str, ...] = ()

    def __call__(self, handles: list[str]) -> list[pysequoia.Cert]:
        self.asked += tuple(handles)
        found = {self.index[h.lower()] for h in handles if h.lower() in self.index}
        self.found += tuple(sorted(found))
        return [self.certs[f] for f in sorted(found)]


class Sequoia:
    """`Crypto` in-process over pysequoia, in one keyring folder."""

    def __init__(self, home: Path, passphrase: str | None = None) -> None:
        self.home = Path(home)
        self._passphrase = passphrase
        self._certs_dir = self.home / "certs"
        self._secret_dir = self.home / "secret"
        for folder in (self.home, self._certs_dir, self._secret_dir):
            folder.mkdir(parents=True, exist_ok=True)
            os.chmod(folder, 0o700)
        self._mutex = threading.RLock()  # this process's threads: one reader or writer
        self._stamp: str | None = None  # the generation token the memory reflects
        self._token: str | None = None  # the token last read, with its file's stat and time
        self._seen: tuple[int, int, int] | None = None
        self._read_at = 0.0
        self._certs: dict[str, pysequoia.Cert] = {}
        self._index: dict[str, str] = {}
        self._secrets: dict[str, pysequoia.Tsk] = {}
        self._described: dict[str, tuple[float, KeyInfo]] = {}

    def close(self) -> None:
        """Nothing to stop: no daemon runs for this backend."""

    def worker_opener(self) -> Callable[[], Sequoia]:
        """This keyring, opened again in a crypto worker process
        (relay/runners/crypto_workers.py). The passphrase travels in the worker's start-up
        pipe, never its arguments or environment; the worker sees every write through the
        generation file."""
        return functools.partial(Sequoia, self.home, self._passphrase)

    # The keyring folder

    def _generation(self) -> str:
        """A token every write replaces (a folder's mtime is too coarse to tell two apart).

        Read again only when the file's inode, mtime or size changed, or a second after the
        last read (an inode reused within the mtime's granularity could hide a write): every
        copy asks for keys, and reading a file each time cost more than signing the copy."""
        path = self.home / "generation"
        try:
            info = os.stat(path)
            seen: tuple[int, int, int] | None = (info.st_ino, info.st_mtime_ns, info.st_size)
        except FileNotFoundError:
            seen = None
        now = time.monotonic()
        if self._token is not None and seen == self._seen and now - self._read_at < _RECHECK:
            return self._token
        try:
            token = path.read_text(encoding="ascii")
        except FileNotFoundError:
            token = ""
        self._seen, self._read_at, self._token = seen, now, token
        return token

    @contextmanager
    def _writing(self) -> Iterator[None]:
        """One writer at a time, across processes: the folder read fresh under the lock, the
        writes, then a new generation token, so every other process reads the folder again."""
        with self._mutex, open(self.home / "lock", "ab") as lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            self._token = None  # under the lock: read the token itself, not its file's stat
            self._load()
            try:
                yield
            finally:
                token = os.urandom(16).hex()
                _replace(self.home / "generation", token.encode("ascii"))
                self._stamp = token  # what this process wrote is in memory already
                self._token = None

    def _load(self) -> None:
        """Read the folder again when another process wrote to it.

        One thread reads at a time, into new tables swapped in whole: the crypto workers
        and the event loop share this object, and none may see a keyring half read."""
        with self._mutex:
            stamp = self._generation()
            if stamp == self._stamp:
                return
            certs: dict[str, pysequoia.Cert] = {}
            index: dict[str, str] = {}
            for path in sorted(self._certs_dir.glob("*.pgp")):
                try:
                    cert = pysequoia.Cert.from_bytes(path.read_bytes())
                except _REFUSED as exc:
                    problem = _first_line(exc)
                    raise CryptoError(f"unreadable certificate {path}: {problem}") from None
                _remember(certs, index, cert)
            secrets = {}
            for path in sorted(self._secret_dir.glob("*.pgp")):
                tsk = self._read_secret(path)
                secrets[_tsk_fingerprint(tsk)] = tsk
            if secrets:
                _no_core_dumps()
            self._certs, self._index, self._secrets = certs, index, secrets
            self._described = {}
            self._stamp = stamp

    def _remember(self, cert: pysequoia.Cert) -> None:
        """Copy on write: another thread may be going through the tables."""
        certs, index = dict(self._certs), dict(self._index)
        _remember(certs, index, cert)
        self._certs, self._index = certs, index
        self._described.pop(cert.fingerprint.upper(), None)

    def _read_secret(self, path: Path) -> pysequoia.Tsk:
        data = path.read_bytes()
        if [p.tag for p in _packets(data)][:1] == [Tag.SKESK]:
            if self._passphrase is None:
                raise CryptoError(f"the secret key file {path} needs its passphrase")
            try:
                data = pysequoia.decrypt(data, passwords=[self._passphrase]).bytes or b""
            except _REFUSED:
                raise CryptoError(f"wrong passphrase for the secret key file {path}") from None
        try:
            return pysequoia.Tsk.from_bytes(data)
        except _REFUSED as exc:
            raise CryptoError(f"unreadable secret key file {path}: {_first_line(exc)}") from None

    def _write_cert(self, cert: pysequoia.Cert) -> None:
        """Write one certificate (public parts only) in place of its older copy (in _writing)."""
        _replace(self._certs_dir / f"{cert.fingerprint.upper()}.pgp", bytes(cert))
        self._remember(cert)

    def _write_secret(self, tsk: pysequoia.Tsk) -> None:
        """Create the key's file once, mode 0600 from the start; never overwrite one (in
        _writing)."""
        data = bytes(tsk)
        if self._passphrase is not None:
            data = bytes(pysequoia.encrypt(data, passwords=[self._passphrase], armor=False))
        fingerprint = _tsk_fingerprint(tsk)
        fd = os.open(
            self._secret_dir / f"{fingerprint}.pgp", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600
        )
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        self._secrets = {**self._secrets, fingerprint: tsk}  # copy on write, as _remember
        self._described.pop(fingerprint, None)

    def _lookup(self) -> _Lookup:
        self._load()
        return _Lookup(self._index, self._certs)

    # Keys

    def _describe(self, cert: pysequoia.Cert, secret: bool) -> KeyInfo:
        now = _now()
        primary = _packets(bytes(cert))[0]
        algorithm = _ALGORITHMS.get(_name(primary.key_algorithm), _name(primary.key_algorithm))
        try:
            uids = tuple(str(uid) for uid in cert.user_ids)
            expires_at = cert.expiration
            accepted = True
        except _REFUSED:  # Sequoia's standard policy refuses the key itself (RSA-1024, say)
            uids, expires_at, accepted = (), None, False
        revoked = cert.is_revoked
        expired = expires_at is not None and expires_at <= now
        return KeyInfo(
            fingerprint=cert.fingerprint.upper(),
            uids=uids,
            algorithm=algorithm,
            bits=_bits(primary, algorithm),
            created_at=primary.key_created or now,
            expires_at=expires_at,
            revoked=revoked,
            expired=expired,
            can_encrypt=accepted
            and not (revoked or expired)
            and _encrypts_to(cert)
            and _has_live_encryption_subkey(cert, now),
            secret=secret,
        )

    def _parse(self, data: bytes) -> list[tuple[pysequoia.Cert, bool]]:
        """The certificates in `data`, each with whether it carries secret key material."""
        try:
            certs = pysequoia.Cert.split_bytes(data)
        except _REFUSED:
            return []
        # A Cert's own bytes leave its secrets out: look for them in what was given.
        blocks = _ARMOUR.findall(data) or [data]  # PacketPile reads one armoured block
        secret = {
            str(p.fingerprint).upper()
            for block in blocks
            for p in _packets(block)
            if p.tag == Tag.SecretKey
        }
        return [(c, c.fingerprint.upper() in secret) for c in certs]

    def inspect_keys(self, data: bytes) -> list[KeyInfo]:
        """Describe the keys in `data` without importing them."""
        return [self._describe(cert, secret) for cert, secret in self._parse(data)]

    def import_keys(self, data: bytes) -> list[str]:
        """Import public keys; refuses secret keys. Returns primary fingerprints."""
        found = self._parse(data)
        if not found:
            raise KeyProblem("no OpenPGP public key found in the file")
        if any(secret for _, secret in found):
            raise KeyProblem("the file holds a secret key; give the public key only")
        with self._writing():
            for cert, _ in found:
                held = self._certs.get(cert.fingerprint.upper())
                try:
                    merged = cert if held is None else held.merge(cert)
                except _REFUSED as exc:
                    problem = _first_line(exc)
                    raise KeyProblem(f"key {cert.fingerprint.upper()}: {problem}") from None
                self._write_cert(merged)
        return [cert.fingerprint.upper() for cert, _ in found]

    def key_info(self, fingerprint: str) -> KeyInfo | None:
        self._load()
        return self._info(fingerprint.upper())

    def list_keys(self) -> list[KeyInfo]:
        # The folder looked at once for the whole listing, not once per key.
        self._load()
        return [info for f in sorted(self._certs) if (info := self._info(f)) is not None]

    def _info(self, fingerprint: str) -> KeyInfo | None:
        """A key of the tables as read, described again once its description is old."""
        cert = self._certs.get(fingerprint)
        if cert is None:
            return None
        cached = self._described.get(fingerprint)
        if cached is not None and time.monotonic() - cached[0] < _LISTING_SECONDS:
            return cached[1]
        info = self._describe(cert, fingerprint in self._secrets)
        self._described[fingerprint] = (time.monotonic(), info)
        return info

    def _cert(self, fingerprint: str) -> pysequoia.Cert:
        self._load()
        cert = self._certs.get(fingerprint.upper())
        if cert is None:
            raise KeyProblem(f"no key {fingerprint} in the keyring")
        return cert

    def export_public(self, fingerprint: str) -> bytes:
        return pysequoia.armor(
            bytes(self._cert(fingerprint)), pysequoia.ArmorKind.PublicKey
        ).encode()

    def export_public_key(
        self,
        fingerprint: str,
        *,
        address: str | None = None,
        only_encryption_subkeys: bool = False,
        armor: bool = False,
    ) -> bytes:
        """The public key as published: minimal (each user ID with its latest self-signature,
        no third-party signatures, nothing secret); with `address`, only the user IDs of that
        address; with `only_encryption_subkeys`, only the subkeys that can encrypt now (an
        Autocrypt header's keydata). Binary unless `armor`."""
        info = exportable(self.key_info(fingerprint), fingerprint, address, only_encryption_subkeys)
        packets = _minimal(_packets(bytes(self._cert(info.fingerprint))), address)
        if only_encryption_subkeys:
            packets = _encryption_subkeys_only(packets, _now())
        try:
            cert = pysequoia.Cert.from_packets(packets)
        except _REFUSED as exc:
            raise CryptoError(
                f"could not export key {info.fingerprint}: {_first_line(exc)}"
            ) from None
        if only_encryption_subkeys and not _encrypts_to(cert):
            raise CryptoError(f"could not export an encryption subkey of {info.fingerprint}")
        if armor:
            return pysequoia.armor(bytes(cert), pysequoia.ArmorKind.PublicKey).encode()
        return bytes(cert)

    # The list's secret key, moved to a new node under a passphrase

    def generate_key(self, name: str, address: str) -> str:
        """A certification key with signing (ed25519) and encryption (cv25519) subkeys,
        without expiry, as v4 keys (GnuPG 2.2 reads no v6 key)."""
        try:
            tsk = pysequoia.Tsk.generate(
                f"{name} <{address}>",
                profile=pysequoia.Profile.RFC4880,
                cipher_suite=pysequoia.CipherSuite.Cv25519,
            )
        except _REFUSED as exc:
            raise CryptoError(f"key generation failed: {_first_line(exc)}") from None
        with self._writing():
            self._write_secret(tsk)
            self._write_cert(tsk.extract_certificate())
        return _tsk_fingerprint(tsk)

    def export_secret_key(self, fingerprint: str, passphrase: str) -> bytes:
        """The secret key, armoured and encrypted under `passphrase` (a password-encrypted
        OpenPGP message, as gpg.py writes and reads). The key in the clear stays in memory."""
        _one_line(passphrase)
        self._load()
        tsk = self._secrets.get(fingerprint.upper())
        if tsk is None:
            raise KeyProblem(f"no secret key {fingerprint} in the keyring")
        try:
            return bytes(pysequoia.encrypt(bytes(tsk), passwords=[passphrase], armor=True))
        except _REFUSED as exc:
            raise CryptoError(f"encryption failed: {_first_line(exc)}") from None

    def import_secret_key(self, data: bytes, passphrase: str) -> str:
        """Decrypt what `export_secret_key` wrote and import the one secret key it holds;
        its fingerprint. A keyring holds one secret key (the list's), so one that holds
        another is refused; the same key again changes nothing."""
        _one_line(passphrase)
        if [p.tag for p in _packets(data)][:1] != [Tag.SKESK]:
            raise CryptoError("not a passphrase-encrypted key file (relay node export-key)")
        try:
            secret = pysequoia.decrypt(data, passwords=[passphrase]).bytes or b""
        except _REFUSED as exc:
            if "No key to decrypt" in str(exc):
                raise CryptoError("wrong passphrase") from None
            raise CryptoError(
                "the key file could not be decrypted (damaged or incomplete)"
            ) from None
        if [p.tag for p in _packets(secret)].count(Tag.SecretKey) != 1:
            raise KeyProblem("the key file must hold exactly one secret key")
        tsk = pysequoia.Tsk.from_bytes(secret)
        fingerprint = _tsk_fingerprint(tsk)
        with self._writing():
            present = set(self._secrets)
            if present - {fingerprint}:
                held_keys = ", ".join(sorted(present))
                raise KeyProblem(f"this keyring already holds another secret key ({held_keys})")
            if fingerprint not in present:
                self._write_secret(tsk)
            cert = tsk.extract_certificate()
            held = self._certs.get(fingerprint)
            self._write_cert(cert if held is None else held.merge(cert))
        return fingerprint

    # Signatures and encryption

    def verify_detached(self, data: bytes, signature: bytes) -> Signature:
        packets = [p for p in _packets(signature) if p.tag == Tag.Signature]
        if not packets:
            return Signature(False, None, "no signature found", "NOSIG")
        # Armoured blocks one after another: Sequoia reads the first only, gpg all of them.
        if len(packets) > 1 or signature.count(b"-----BEGIN PGP ") > 1:
            return _MORE_THAN_ONE
        lookup = self._lookup()
        try:
            sig = pysequoia.Sig.from_bytes(signature)
            result = pysequoia.verify(bytes=data, store=lookup, signature=sig)
        except _REFUSED:
            return self._refused(lookup, packets[0])
        return self._accepted(result.valid_sigs, packets[0].signature_created)

    def verify_cleartext(self, data: bytes) -> tuple[Signature, bytes]:
        """Verify a cleartext-signed block; return the verdict and the signed text."""
        packets = [p for p in _packets(data) if p.tag == Tag.Signature]
        if not packets:
            return Signature(False, None, "no signature found", "NOSIG"), b""
        if len(packets) > 1:
            return _MORE_THAN_ONE, b""
        lookup = self._lookup()
        try:
            result = pysequoia.verify(bytes=data, store=lookup)
        except _REFUSED:
            return self._refused(lookup, packets[0]), b""
        verdict = self._accepted(result.valid_sigs, packets[0].signature_created)
        return verdict, (result.bytes or b"") + _last_line_end(data)

    def decrypt(self, data: bytes) -> Decrypted:
        packets = _packets(data)
        if not packets:
            raise CryptoError("the message could not be decrypted")
        if packets[0].tag not in (Tag.PKESK, Tag.SKESK):
            raise CryptoError("the message is not encrypted")
        recipients = tuple(
            p.body[1:9].hex().upper()
            for p in packets
            if p.tag == Tag.PKESK and p.body[:1] == b"\x03"
        )
        self._load()
        for tsk in self._secrets.values():
            try:
                decryptor = tsk.decryptor()
            except _REFUSED:  # a key without an encryption subkey
                continue
            lookup = self._lookup()
            try:
                result = pysequoia.decrypt(data, decryptor=decryptor, store=lookup)
            except _REFUSED as exc:
                if "No key to decrypt" in str(exc):
                    continue  # encrypted to another of the list's keys, or to none
                return self._decrypted_unverified(data, tsk, lookup, str(exc), recipients)
            if len(result.valid_sigs) > 1 or len(lookup.asked) > 1:
                return Decrypted(result.bytes or b"", _MORE_THAN_ONE, recipients)
            # pysequoia 0.1.35 does not tell a signature's creation time inside an encrypted
            # message (its ValidSig holds the certificate and signing key only), and without
            # it the relay cannot tell a fresh post from a replayed one.
            return Decrypted(result.bytes or b"", _UNTIMED, recipients)
        raise CryptoError("the message is not encrypted to the list key")

    def _decrypted_unverified(
        self,
        data: bytes,
        tsk: pysequoia.Tsk,
        lookup: _Lookup,
        error: str,
        recipients: tuple[str, ...],
    ) -> Decrypted:
        """Decryption with the signature check failed: decrypt again without it, then say
        why the signature (if there is one) is not good."""
        try:
            plaintext = pysequoia.decrypt(data, decryptor=tsk.decryptor()).bytes or b""
        except _REFUSED:
            raise CryptoError("the message could not be decrypted") from None
        if not lookup.asked:
            return Decrypted(plaintext, None, recipients)
        if "Unexpected message structure" in error:
            # pysequoia 0.1.35 cannot check a signature inside compressed data (what gpg
            # makes by default when signing and encrypting in one).
            return Decrypted(plaintext, _UNCHECKABLE, recipients)
        if len(lookup.asked) > 1:
            return Decrypted(plaintext, _MORE_THAN_ONE, recipients)
        return Decrypted(plaintext, self._refused(lookup, None), recipients)

    def _accepted(self, valid: list[Any], created: datetime | None) -> Signature:
        """Sequoia found the signature good; apply gpg's rules it does not apply itself."""
        if len(valid) != 1:
            return _MORE_THAN_ONE
        fingerprint = str(valid[0].certificate).upper()
        info = self.key_info(fingerprint)
        if info is None:  # cannot happen: Sequoia had the certificate from this keyring
            return Signature(False, None, "the signature could not be verified", "NOSIG")
        if info.revoked:
            return Signature(False, None, "the signing key is revoked", "REVKEYSIG")
        if info.expired:  # Sequoia accepts a key valid when it signed; gpg does not
            return Signature(False, None, "the signing key has expired", "EXPKEYSIG")
        if created is None:
            return Signature(False, None, "the signature has no creation time", "VALIDSIG")
        return Signature(True, fingerprint, "", "GOODSIG", created)

    def _refused(self, lookup: _Lookup, signature: Packet | None) -> Signature:
        """Sequoia found no good signature; it does not say why, so tell what can be told
        from the keyring and the signature packet."""
        if not lookup.found:
            return Signature(False, None, "signed by an unknown key", "ERRSIG")
        info = self.key_info(lookup.found[0])
        if info is not None and info.revoked:
            return Signature(False, None, "the signing key is revoked", "REVKEYSIG")
        expires = None if signature is None else signature.signature_expiration_time
        if expires is not None and expires <= _now():
            return Signature(False, None, "the signature has expired", "EXPSIG")
        created = None if signature is None else signature.signature_created
        if created is not None and created > _now():
            # Sequoia takes a signature from beyond its clock-skew tolerance for no signature;
            # gpg calls it good and the relay refuses it for its date: say that, not "bad".
            return Signature(False, None, "the signature is dated in the future", "ERRSIG")
        if info is None or not _policy_accepts(self._cert(info.fingerprint)):
            return Signature(False, None, "the signature cannot be checked", "ERRSIG")
        return Signature(False, None, "the signature does not match the signed content", "BADSIG")

    def _recipients(self, recipients: Iterable[str]) -> list[pysequoia.Cert]:
        """The certificates to encrypt to, each able to now: gpg refuses an expired or revoked
        key, where pysequoia would encrypt to its expired subkey."""
        targets = list(recipients)
        if not targets:
            raise CryptoError("no recipient key to encrypt to")
        certs = []
        for fingerprint in targets:
            info = self.key_info(fingerprint)
            if info is None:
                raise CryptoError(f"no key {fingerprint} in the keyring")
            if not info.can_encrypt:
                raise CryptoError(f"cannot encrypt to {info.fingerprint}: {info.problem}")
            certs.append(self._cert(info.fingerprint))
        return certs

    def _signer(self, fingerprint: str) -> pysequoia.PySigner:
        self._load()
        tsk = self._secrets.get(fingerprint.upper())
        if tsk is None:
            raise CryptoError(f"signing failed: no secret key {fingerprint} in the keyring")
        try:
            return tsk.signer()
        except _REFUSED as exc:
            raise CryptoError(f"signing failed: {_first_line(exc)}") from None

    def sign_encrypt(self, data: bytes, recipients: Iterable[str], signer: str) -> bytes:
        """One OpenPGP message, signed by `signer` and encrypted to `recipients` only."""
        certs = self._recipients(recipients)
        key = self._signer(signer)
        try:
            return bytes(pysequoia.encrypt(data, certs, signer=key, armor=True))
        except _REFUSED as exc:
            raise CryptoError(f"signing and encryption failed: {_first_line(exc)}") from None

    def sign_detached(self, data: bytes, signer: str) -> tuple[bytes, str]:
        """An armoured detached signature and its RFC 3156 micalg (from the signature)."""
        key = self._signer(signer)
        try:
            signature = bytes(
                pysequoia.sign(key, data, mode=pysequoia.SignatureMode.DETACHED, armor=True)
            )
            digest = _name(pysequoia.Sig.from_bytes(signature).hash_algorithm)
        except _REFUSED as exc:
            raise CryptoError(f"signing failed: {_first_line(exc)}") from None
        if digest not in _MICALG:
            raise CryptoError(f"signing used an unsupported hash algorithm {digest}")
        return signature, _MICALG[digest]

    def encrypt(self, data: bytes, recipients: Iterable[str]) -> bytes:
        """One OpenPGP message encrypted to `recipients` only (armoured)."""
        certs = self._recipients(recipients)
        try:
            return bytes(pysequoia.encrypt(data, certs, armor=True))
        except _REFUSED as exc:
            raise CryptoError(f"encryption failed: {_first_line(exc)}") from None


def _no_core_dumps() -> None:
    """This process holds a secret key in its memory from now on: a crash writes no core
    file that would put it on disk, as gpg-agent disables them for the keys it holds. The
    soft limit is the one a crash obeys; the hard one stays, for the processes it starts."""
    _, hard = resource.getrlimit(resource.RLIMIT_CORE)
    resource.setrlimit(resource.RLIMIT_CORE, (0, hard))


# How long the generation file's unchanged stat is trusted before the token is read again.
_RECHECK = 1.0

_MORE_THAN_ONE = Signature(
    False, None, "more than one signature; exactly one is required", "NEWSIG"
)
# A signature inside the encryption this backend cannot judge fully: refused, with the form
# it can judge named (PGP/MIME signed, then encrypted: RFC 3156 section 6.1).
_INSIDE = (
    "; this relay checks a signature inside the encryption only as a PGP/MIME signed part"
    " (sign, then encrypt, as separate steps)"
)
_UNTIMED = Signature(
    False, None, "the signature's creation time cannot be read" + _INSIDE, "ERRSIG"
)
_UNCHECKABLE = Signature(
    False, None, "a signature inside compressed data cannot be checked" + _INSIDE, "ERRSIG"
)


def _replace(path: Path, data: bytes) -> None:
    """Write `data` as `path`, atomically (a reader sees the old file or the new one)."""
    fd, scratch = tempfile.mkstemp(dir=path.parent, prefix=".new-")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(scratch, path)
    except BaseException:
        Path(scratch).unlink(missing_ok=True)
        raise


def _remember(
    certs: dict[str, pysequoia.Cert], index: dict[str, str], cert: pysequoia.Cert
) -> None:
    """Add `cert` to the tables, indexed by each of its keys' fingerprint and key ID."""
    fingerprint = cert.fingerprint.upper()
    certs[fingerprint] = cert
    for packet in _packets(bytes(cert)):
        if packet.tag in _KEY_TAGS:
            index[str(packet.fingerprint).lower()] = fingerprint
            index[str(packet.key_id).lower()] = fingerprint


def _encrypts_to(cert: pysequoia.Cert) -> bool:
    """Sequoia itself finds a key of `cert` to encrypt to (under its standard policy)."""
    try:
        pysequoia.encrypt(b"", [cert], armor=False)
    except _REFUSED:
        return False
    return True


def _policy_accepts(cert: pysequoia.Cert) -> bool:
    try:
        return cert.user_ids is not None
    except _REFUSED:
        return False


def _tsk_fingerprint(tsk: pysequoia.Tsk) -> str:
    return tsk.extract_certificate().fingerprint.upper()


def _last_line_end(data: bytes) -> bytes:
    """The line end before the signature armour: gpg returns the signed text with it,
    Sequoia without it (RFC 4880 §7.1 leaves it out of what is signed)."""
    at = data.rfind(b"\n-----BEGIN PGP SIGNATURE-----")
    return b"\r\n" if at > 0 and data[at - 1 : at] == b"\r" else b"\n"


def _self_issued(packet: Packet, primary: Packet) -> bool:
    return packet.issuer_fingerprint == primary.fingerprint or (
        packet.issuer_fingerprint is None and packet.issuer_key_id == primary.key_id
    )


def _minimal(packets: list[Packet], address: str | None) -> list[Packet]:
    """The primary key, its own signatures, and each kept user ID and subkey with its latest
    self-signature and its revocations; no third-party signature, no user attribute."""
    primary = packets[0]
    out: list[Packet] = [primary]
    groups: list[tuple[Packet, list[Packet]]] = []
    own: list[Packet] = []  # direct-key signatures and revocations of the primary
    for packet in packets[1:]:
        if packet.tag in (Tag.UserID, Tag.UserAttribute, Tag.PublicSubkey):
            groups.append((packet, []))
        elif packet.tag == Tag.Signature and _self_issued(packet, primary):
            (groups[-1][1] if groups else own).append(packet)
    out += own
    for head, signatures in groups:
        if head.tag == Tag.UserAttribute:
            continue
        mailbox = (head.user_id_email or "").lower()
        if head.tag == Tag.UserID and address is not None and mailbox != address.lower():
            continue
        out.append(head)
        out += _latest_and_revocations(signatures)
    return out


_REVOCATION_TYPES = (
    SignatureType.CertificationRevocation,
    SignatureType.SubkeyRevocation,
    SignatureType.KeyRevocation,
)


def _latest_and_revocations(signatures: list[Packet]) -> list[Packet]:
    revocations = [s for s in signatures if s.signature_type in _REVOCATION_TYPES]
    bindings = [s for s in signatures if s.signature_type not in _REVOCATION_TYPES]
    epoch = datetime.min.replace(tzinfo=UTC)
    latest = max(bindings, key=lambda s: s.signature_created or epoch, default=None)
    return ([latest] if latest is not None else []) + revocations


def _subkeys(packets: list[Packet]) -> list[tuple[int, list[Packet]]]:
    """Each subkey's position in `packets`, with the primary's own signatures that follow it."""
    groups = []
    for index, packet in enumerate(packets):
        if packet.tag == Tag.PublicSubkey:
            signatures = []
            for following in packets[index + 1 :]:
                if following.tag != Tag.Signature:
                    break
                if _self_issued(following, packets[0]):
                    signatures.append(following)
            groups.append((index, signatures))
    return groups


def _encryption_subkeys_only(packets: list[Packet], now: datetime) -> list[Packet]:
    """Drop every subkey (with its signatures) that cannot encrypt now: no encryption flag,
    expired, or revoked. Only drops: Sequoia checks what is kept when it parses it back.

    A live signing subkey stays when the primary does not sign (as in the keys this backend
    makes): without it the export could not check the list's signatures."""
    keep_signing = not _primary_signs(packets)
    dropped: set[int] = set()
    for index, signatures in _subkeys(packets):
        subkey = packets[index]
        if _subkey_encrypts(subkey, signatures, now):
            continue
        if keep_signing and _subkey_signs(subkey, signatures, now):
            continue
        dropped.update(range(index, index + 1 + len(signatures)))
    return [packet for index, packet in enumerate(packets) if index not in dropped]


def _primary_signs(packets: list[Packet]) -> bool:
    """The primary's own self-signatures give it the signing flag."""
    primary = packets[0]
    for packet in packets[1:]:
        if packet.tag in (Tag.PublicSubkey, Tag.SecretSubkey):
            break
        if packet.tag == Tag.Signature and _self_issued(packet, primary):
            flags = packet.key_flags
            if flags is not None and flags.signing:
                return True
    return False


def _has_live_encryption_subkey(cert: pysequoia.Cert, now: datetime) -> bool:
    """Whether a subkey's own binding says it encrypts and has neither expired nor been
    revoked. pysequoia shows no subkey validity, and its encrypt falls back to an expired
    subkey when no live one is left (gpg refuses): this is read only ever to refuse."""
    packets = _packets(bytes(cert))
    return any(_subkey_encrypts(packets[i], sigs, now) for i, sigs in _subkeys(packets))


def _subkey_encrypts(subkey: Packet, signatures: list[Packet], now: datetime) -> bool:
    return _subkey_live_for(
        subkey, signatures, now, lambda f: f.transport_encryption or f.storage_encryption
    )


def _subkey_signs(subkey: Packet, signatures: list[Packet], now: datetime) -> bool:
    return _subkey_live_for(subkey, signatures, now, lambda f: f.signing)


def _subkey_live_for(
    subkey: Packet, signatures: list[Packet], now: datetime, usage: Callable[[Any], bool]
) -> bool:
    """The subkey's latest binding gives it `usage`, and it has neither expired nor been
    revoked."""
    if any(s.signature_type == SignatureType.SubkeyRevocation for s in signatures):
        return False
    bindings = [s for s in signatures if s.signature_type == SignatureType.SubkeyBinding]
    epoch = datetime.min.replace(tzinfo=UTC)
    binding = max(bindings, key=lambda s: s.signature_created or epoch, default=None)
    if binding is None:
        return False
    flags = binding.key_flags
    if flags is None or not usage(flags):
        return False
    period, created = binding.key_validity_period, subkey.key_created
    return period is None or created is None or created + period > now

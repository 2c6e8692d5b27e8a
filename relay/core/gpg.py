"""`Crypto` over python-gnupg and the real GnuPG binary, in one GnuPG home.

Only gpg's machine-readable status lines are believed (`--status-fd`, never its messages
for people), a signature's signer is the primary key of its VALIDSIG line, every signature
made must be by exactly the key asked for, and gpg never looks a key up on the network.
"""

from __future__ import annotations

import codecs
import functools
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path

import gnupg

from relay.core.crypto import Decrypted, KeyInfo, Signature, exportable
from relay.core.errors import CryptoError, KeyProblem

# Algorithms GnuPG reports by number in --with-colons output (RFC 4880 §9.1, RFC 9580).
_ALGORITHMS = {
    1: "RSA",
    2: "RSA",
    3: "RSA",
    16: "ElGamal",
    17: "DSA",
    18: "ECDH",
    19: "ECDSA",
    22: "EdDSA",
    25: "X25519",
    27: "Ed25519",
}

# Options that keep gpg local and fast: no network look-ups, no shared random
# seed file (concurrent gpg processes stall on its lock).
_GPG_OPTIONS = [
    "--no-random-seed-file",
    "--no-auto-key-retrieve",
    "--auto-key-locate",
    "local",
    "--keyserver-options",
    "no-auto-key-retrieve",
    "--no-encrypt-to",  # an encrypt-to line in gpg.conf must never add recipients
    "--no-emit-version",
    "--no-comments",
    "--trust-model",
    "always",
]
# A passphrase-encrypted key file: a strong s2k, and no passphrase left in gpg-agent's cache.
_S2K = [
    "--s2k-mode",
    "3",
    "--s2k-digest-algo",
    "SHA512",
    "--s2k-count",
    "65011712",
    "--s2k-cipher-algo",
    "AES256",
    "--no-symkey-cache",
]
# gpg writes a signature's notation values raw on its status line (NOTATION_DATA), and
# Sequoia puts a binary salt notation in every signature it makes; python-gnupg reads that
# stream with the strict codec of its `encoding`, and a stray byte would kill its reader.
# So its encoding is UTF-8 whose stream reader replaces what is not UTF-8 (the verdict is
# read from the ASCII keywords and fingerprints of other lines).
STATUS_ENCODING = "relay_utf8_status"


def _status_codec(name: str) -> codecs.CodecInfo | None:
    if name != STATUS_ENCODING:
        return None
    utf8 = codecs.lookup("utf-8")
    base = utf8.streamreader

    class Reader(base):  # type: ignore[valid-type,misc]
        def __init__(self, stream: object, errors: str = "replace") -> None:
            super().__init__(stream, "replace")

    return codecs.CodecInfo(
        utf8.encode,
        utf8.decode,
        streamreader=Reader,
        streamwriter=utf8.streamwriter,
        incrementalencoder=utf8.incrementalencoder,
        incrementaldecoder=utf8.incrementaldecoder,
        name=STATUS_ENCODING,
    )


codecs.register(_status_codec)

_GPG_CONF = "no-auto-key-retrieve\nauto-key-locate local\nno-random-seed-file\n"


def _status(stderr: str) -> list[list[str]]:
    return [line[9:].split(" ") for line in stderr.splitlines() if line.startswith("[GNUPG:] ")]


_SIG_PROBLEMS = {
    "BADSIG": "the signature does not match the signed content",
    "EXPKEYSIG": "the signing key has expired",
    "REVKEYSIG": "the signing key is revoked",
    "EXPSIG": "the signature has expired",
}


def signature_from_status(status: list[list[str]]) -> Signature | None:
    """Judge a signature from status lines; None when nothing was signed."""
    keywords = [s[0] for s in status]
    count = keywords.count("NEWSIG")
    if count == 0 and not any(k in keywords for k in ("GOODSIG", "BADSIG", "ERRSIG")):
        return None
    if count > 1:
        return Signature(False, None, "more than one signature; exactly one is required", "NEWSIG")
    for fields in status:
        if fields[0] in _SIG_PROBLEMS:
            return Signature(False, None, _SIG_PROBLEMS[fields[0]], fields[0])
        if fields[0] == "ERRSIG":
            missing = "NO_PUBKEY" in keywords or (len(fields) > 6 and fields[6] == "9")
            reason = "signed by an unknown key" if missing else "the signature cannot be checked"
            return Signature(False, None, reason, "ERRSIG")
    valid = [s for s in status if s[0] == "VALIDSIG"]
    if "GOODSIG" in keywords and len(valid) == 1 and len(valid[0]) >= 11:
        try:
            created = _epoch(valid[0][3])
        except ValueError:
            created = None
        if created is None:
            return Signature(False, None, "the signature has no creation time", "VALIDSIG")
        return Signature(True, valid[0][10].upper(), "", "GOODSIG", created)
    return Signature(False, None, "the signature could not be verified", "NOSIG")


def _epoch(value: str) -> datetime | None:
    if not value:
        return None
    if value.isdigit():
        return datetime.fromtimestamp(int(value), UTC)
    return datetime.fromisoformat(value).replace(tzinfo=UTC)


def _key_from_listing(entry: dict, secret: bool = False) -> KeyInfo:
    now = datetime.now(UTC)
    validity = entry.get("trust", "")
    revoked = validity == "r"
    expires_at = _epoch(entry.get("expires", ""))
    expired = validity == "e" or (expires_at is not None and expires_at <= now)

    # Upper-case letters in the primary's capability field are gpg's own verdict
    # on the whole key (expired or revoked subkeys already left out).
    can_encrypt = not (revoked or expired) and "E" in entry.get("cap", "")
    algo = int(entry.get("algo") or 0)
    return KeyInfo(
        fingerprint=entry["fingerprint"].upper(),
        uids=tuple(entry.get("uids", [])),
        algorithm=_ALGORITHMS.get(algo, f"algorithm {algo}"),
        bits=int(entry.get("length") or 0),
        created_at=_epoch(entry.get("date", "")) or now,
        expires_at=expires_at,
        revoked=revoked,
        expired=expired,
        can_encrypt=can_encrypt,
        secret=secret,
    )


class GnuPG:
    """`Crypto` over python-gnupg and the gpg binary, in one GnuPG home."""

    def __init__(self, home: Path, binary: str = "gpg") -> None:
        self.home = Path(home)
        self._binary = binary
        prepare_home(self.home)
        try:
            self._gpg = gnupg.GPG(gpgbinary=binary, gnupghome=str(self.home), options=_GPG_OPTIONS)
        except (OSError, ValueError, RuntimeError) as exc:
            raise CryptoError(f"cannot run GnuPG ({binary}): {exc}") from None
        self._gpg.encoding = STATUS_ENCODING
        self._listing: tuple[tuple[int, int], float, list[KeyInfo]] | None = None
        # Signer primary -> (keyring stamp, when, the fingerprint of the key that signs).
        self._signing: dict[str, tuple[tuple[int, int], float, str]] = {}

    @staticmethod
    def version_text(binary: str = "gpg") -> str:
        """The GnuPG version, for reports."""
        out = subprocess.run([binary, "--version"], capture_output=True, text=True, check=False)
        return out.stdout.split("\n", 1)[0].rsplit(" ", 1)[-1] if out.stdout else "unknown"

    def close(self) -> None:
        """Stop the daemons gpg started on demand for this home (gpg-agent, keyboxd, ...):
        they would outlive the relay, holding the list key's secret in memory. Best
        effort: a missing gpgconf, or one that fails or hangs, is no reason to fail a stop."""
        gpgconf = shutil.which("gpgconf")
        if gpgconf is None:
            return
        try:
            subprocess.run(
                [gpgconf, "--homedir", str(self.home), "--kill", "all"],
                capture_output=True,
                check=False,
                timeout=10,
            )
        except (OSError, subprocess.SubprocessError):
            return

    def worker_opener(self) -> Callable[[], GnuPG]:
        """This GnuPG home, opened again in a crypto worker process
        (relay/runners/crypto_workers.py); its gpg-agent is the relay's."""
        return functools.partial(GnuPG, self.home, self._binary)

    # Keys

    def inspect_keys(self, data: bytes) -> list[KeyInfo]:
        """Describe the keys in `data` without importing them."""
        with tempfile.TemporaryDirectory(prefix="relay-inspect-") as scratch:
            os.chmod(scratch, 0o700)
            probe = gnupg.GPG(
                gnupghome=scratch, gpgbinary=self._gpg.gpgbinary, options=_GPG_OPTIONS
            )
            probe.encoding = STATUS_ENCODING
            try:
                result = probe.import_keys(data)
                if not result.fingerprints:
                    return []
                secret = {k["fingerprint"] for k in probe.list_keys(secret=True)}
                listing = probe.list_keys()
            finally:
                # Listing secret keys started a gpg-agent for the scratch home: stop it, or
                # every inspection would leave one running after its home is gone.
                stop_agent(Path(scratch))
            return [_key_from_listing(k, k["fingerprint"] in secret) for k in listing]

    def import_keys(self, data: bytes) -> list[str]:
        """Import public keys; refuses secret keys. Returns primary fingerprints."""
        found = self.inspect_keys(data)
        if not found:
            raise KeyProblem("no OpenPGP public key found in the file")
        if any(k.secret for k in found):
            raise KeyProblem("the file holds a secret key; give the public key only")
        result = self._gpg.import_keys(data)
        fingerprints = sorted({f.upper() for f in result.fingerprints})
        if not fingerprints:
            raise KeyProblem("GnuPG did not import any key from the file")
        return [k.fingerprint for k in found if k.fingerprint in fingerprints]

    def key_info(self, fingerprint: str) -> KeyInfo | None:
        keys = self._gpg.list_keys(keys=[fingerprint])
        matches = [k for k in keys if k["fingerprint"].upper() == fingerprint.upper()]
        if not matches:
            return None
        secret = bool(self._gpg.list_keys(secret=True, keys=[fingerprint]))
        return _key_from_listing(matches[0], secret)

    def list_keys(self) -> list[KeyInfo]:
        """All keys; cached while the keyring file is unchanged (at most a minute)."""
        stamp = self._keyring_stamp()
        now = time.monotonic()
        if self._listing is None or self._listing[0] != stamp or now - self._listing[1] > 60:
            secret = {k["fingerprint"] for k in self._gpg.list_keys(secret=True)}
            keys = [_key_from_listing(k, k["fingerprint"] in secret) for k in self._gpg.list_keys()]
            self._listing = (stamp, now, keys)
        return list(self._listing[2])

    def signing_key(self, signer: str) -> str:
        """The fingerprint of the key that signs for the primary `signer`: the primary when
        it can sign, else its newest usable signing subkey. Cached like `list_keys`, as
        every copy of a fan-out signs."""
        signer = signer.upper()
        stamp = self._keyring_stamp()
        now = time.monotonic()
        cached = self._signing.get(signer)
        if cached is not None and cached[0] == stamp and now - cached[1] <= 60:
            return cached[2]
        args = ["--with-subkey-fingerprint", "--list-secret-keys", signer]
        listing = subprocess.run(self._gpg.make_args(args, False), capture_output=True, check=False)
        key = signing_key_from_listing(listing.stdout.decode(errors="replace"), signer)
        if key is None:
            raise CryptoError(f"no usable secret signing key for {signer} in the keyring")
        self._signing[signer] = (stamp, now, key)
        return key

    def _keyring_stamp(self) -> tuple[int, int]:
        stamps = []
        for name in ("pubring.kbx", "pubring.gpg", "private-keys-v1.d"):
            try:
                info = (self.home / name).stat()
            except FileNotFoundError:
                continue
            stamps.append((info.st_mtime_ns, info.st_size))
        return tuple(stamps)  # type: ignore[return-value]

    def export_public(self, fingerprint: str) -> bytes:
        data = self._gpg.export_keys(fingerprint, armor=True)
        if not data:
            raise KeyProblem(f"no key {fingerprint} in the keyring")
        return data.encode() if isinstance(data, str) else data

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
        args = ["--export-options", "export-minimal"]
        if address is not None:
            args += ["--export-filter", f"keep-uid=mbox = {address.lower()}"]
        if only_encryption_subkeys:
            args += ["--export-filter", "drop-subkey=usage !~ e || expired -t || revoked -t"]
        if armor:
            args.append("--armor")
        # python-gnupg's export_keys takes no export filters: run gpg with its command line.
        command = self._gpg.make_args([*args, "--export", info.fingerprint], False)
        result = subprocess.run(command, capture_output=True, check=False)
        if result.returncode != 0 or not result.stdout:
            raise CryptoError(f"gpg could not export key {info.fingerprint}")
        return result.stdout

    # The list's secret key, moved to a new node under a passphrase

    def export_secret_key(self, fingerprint: str, passphrase: str) -> bytes:
        """The secret key, armoured and encrypted under `passphrase` (AES256, iterated and
        salted SHA-512 s2k). The key in the clear passes only through gpg's pipes and this
        process's memory, never a file."""
        secret = self._gpg.export_keys(
            fingerprint, secret=True, armor=False, expect_passphrase=False
        )
        if not secret:
            raise KeyProblem(f"no secret key {fingerprint} in the keyring")
        try:
            result = self._gpg.encrypt(
                secret,
                None,
                symmetric="AES256",
                passphrase=passphrase,
                armor=True,
                extra_args=_S2K,
            )
        except ValueError:  # python-gnupg refuses a passphrase with a line break
            raise CryptoError("the passphrase must be one line") from None
        keywords = {s[0] for s in _status(result.stderr)}
        if not result.ok or "END_ENCRYPTION" not in keywords:
            raise CryptoError(f"encryption failed: {result.status or 'unknown error'}")
        return bytes(result.data)

    def import_secret_key(self, data: bytes, passphrase: str) -> str:
        """Decrypt what `export_secret_key` wrote and import the one secret key it holds;
        its fingerprint. A home holds one secret key (the list's), so one that holds
        another is refused; the same key again changes nothing."""
        try:
            result = self._gpg.decrypt(
                data, passphrase=passphrase, extra_args=["--no-symkey-cache"]
            )
        except ValueError:
            raise CryptoError("the passphrase must be one line") from None
        status = _status(result.stderr)
        if not any(s[0] == "NEED_PASSPHRASE_SYM" for s in status):
            raise CryptoError("not a passphrase-encrypted key file (relay node export-key)")
        if any(s[0] == "ERROR" and s[-1].endswith("BAD_PASSPHRASE") for s in status):
            raise CryptoError("wrong passphrase")
        if "DECRYPTION_OKAY" not in {s[0] for s in status}:
            raise CryptoError("the key file could not be decrypted (damaged or incomplete)")
        secret = bytes(result.data)
        found = [k for k in self._gpg.scan_keys_mem(secret) if k.get("type") == "sec"]
        if len(found) != 1:
            raise KeyProblem("the key file must hold exactly one secret key")
        fingerprint = found[0]["fingerprint"].upper()
        present = {k["fingerprint"].upper() for k in self._gpg.list_keys(secret=True)}
        if present - {fingerprint}:
            raise KeyProblem(
                f"this GnuPG home already holds another secret key ({', '.join(sorted(present))})"
            )
        self._gpg.import_keys(secret)
        imported = self.key_info(fingerprint)
        if imported is None or not imported.secret:
            raise CryptoError(f"GnuPG did not import the secret key {fingerprint}")
        return fingerprint

    def generate_key(self, name: str, address: str) -> str:
        """A signing (ed25519) + encryption (cv25519) key without passphrase."""
        params = self._gpg.gen_key_input(
            key_type="EDDSA",
            key_curve="ed25519",
            key_usage="sign",
            subkey_type="ECDH",
            subkey_curve="cv25519",
            subkey_usage="encrypt",
            name_real=name,
            name_email=address,
            expire_date="0",
            no_protection=True,
        )
        result = self._gpg.gen_key(params)
        if not result.fingerprint:
            raise CryptoError(f"key generation failed: {result.status or 'unknown error'}")
        return str(result.fingerprint).upper()

    # Signatures and encryption

    def verify_detached(self, data: bytes, signature: bytes) -> Signature:
        with tempfile.NamedTemporaryFile(prefix="relay-sig-", suffix=".asc") as sig:
            sig.write(signature)
            sig.flush()
            result = self._gpg.verify_data(sig.name, data)
        return signature_from_status(_status(result.stderr)) or Signature(
            False, None, "no signature found", "NOSIG"
        )

    def verify_cleartext(self, data: bytes) -> tuple[Signature, bytes]:
        """Verify a cleartext-signed block; return the verdict and the signed text."""
        result = self._gpg.decrypt(data)
        status = _status(result.stderr)
        signature = signature_from_status(status) or Signature(
            False, None, "no signature found", "NOSIG"
        )
        return signature, bytes(result.data or b"")

    def decrypt(self, data: bytes) -> Decrypted:
        result = self._gpg.decrypt(data)
        status = _status(result.stderr)
        keywords = {s[0] for s in status}
        if "DECRYPTION_OKAY" not in keywords or "DECRYPTION_FAILED" in keywords:
            if "NO_SECKEY" in keywords:
                raise CryptoError("the message is not encrypted to the list key")
            raise CryptoError("the message could not be decrypted")
        if "BEGIN_DECRYPTION" not in keywords:
            raise CryptoError("the message is not encrypted")
        enc_to = tuple(s[1] for s in status if s[0] == "ENC_TO" and len(s) > 1)
        return Decrypted(bytes(result.data), signature_from_status(status), enc_to)

    def sign_encrypt(self, data: bytes, recipients: Iterable[str], signer: str) -> bytes:
        """One OpenPGP message, signed by `signer` and encrypted to `recipients` only."""
        targets = list(recipients)
        if not targets:
            raise CryptoError("no recipient key to encrypt to")
        key = self.signing_key(signer)
        result = self._gpg.encrypt(
            data,
            targets,
            sign=key,
            always_trust=True,
            armor=True,
            extra_args=["--local-user", f"{key}!"],
        )
        status = _status(result.stderr)
        keywords = {s[0] for s in status}
        if not result.ok or "END_ENCRYPTION" not in keywords or not _signed_by(status, key):
            problem = result.status or "unknown error"
            raise CryptoError(f"signing and encryption failed: {problem}")
        return bytes(result.data)

    def sign_detached(self, data: bytes, signer: str) -> tuple[bytes, str]:
        """An armoured detached signature and its RFC 3156 micalg (from gpg's SIG_CREATED)."""
        # --local-user with "!" makes gpg use exactly this key or fail; python-gnupg's own
        # --default-key would silently fall back to another secret key.
        key = self.signing_key(signer)
        result = self._gpg.sign(
            data,
            keyid=key,
            detach=True,
            clearsign=False,
            extra_args=["--local-user", f"{key}!"],
        )
        status = _status(result.stderr)
        created = [s for s in status if s[0] == "SIG_CREATED"]
        if len(created) != 1 or not _signed_by(status, key) or not result.data:
            raise CryptoError(f"signing failed: {result.status or 'unknown error'}")
        micalg = _MICALG.get(int(created[0][3]))
        if micalg is None:
            raise CryptoError(f"signing used an unsupported hash algorithm {created[0][3]}")
        return bytes(result.data), micalg

    def encrypt(self, data: bytes, recipients: Iterable[str]) -> bytes:
        """One OpenPGP message encrypted to `recipients` only (armoured)."""
        targets = list(recipients)
        if not targets:
            raise CryptoError("no recipient key to encrypt to")
        result = self._gpg.encrypt(data, targets, always_trust=True, armor=True)
        keywords = {s[0] for s in _status(result.stderr)}
        if not result.ok or "END_ENCRYPTION" not in keywords:
            raise CryptoError(f"encryption failed: {result.status or 'unknown error'}")
        return bytes(result.data)


def signing_key_from_listing(listing: str, primary: str) -> str | None:
    """From `gpg --with-colons --with-subkey-fingerprint --list-secret-keys`, the key of
    `primary` that signs: the primary if its own usage has 's', else its newest signing
    subkey; only unexpired, unrevoked keys whose secret part is here. None if there is none.
    The primary's own secret may be kept offline (a stub) when a subkey signs."""
    keys = _secret_keys_of(listing, primary)
    if not keys or not _valid(keys[0][0]):
        return None  # no such secret key, or the whole key is expired or revoked
    if _signs(keys[0][0]):
        return keys[0][1]
    subkeys = [(_created(row), n, fpr) for n, (row, fpr) in enumerate(keys[1:]) if _signs(row)]
    return max(subkeys)[2] if subkeys else None


def _secret_keys_of(listing: str, primary: str) -> list[tuple[list[str], str]]:
    """The sec and ssb records of `primary` in a listing, each with its fingerprint."""
    found: list[tuple[list[str], str]] = []
    record: list[str] | None = None
    for row in (line.split(":") for line in listing.splitlines()):
        if row[0] == "sec":
            if found:
                break  # the next key
            record = row
        elif row[0] == "ssb":
            record = row if found else None
        elif row[0] == "fpr" and record is not None and len(row) > 9 and len(record) > 14:
            if record[0] == "sec" and row[9].upper() != primary:
                record = None  # gpg also lists a key by one of its subkeys' fingerprints
                continue
            found.append((record, row[9].upper()))
            record = None
    return found


def _valid(row: list[str]) -> bool:
    """Neither revoked, expired nor invalid (validity field, or expiry date passed)."""
    expires = _epoch(row[6])
    expired = row[1] == "e" or (expires is not None and expires <= datetime.now(UTC))
    return row[1] not in ("r", "i") and not expired


def _signs(row: list[str]) -> bool:
    """Its own usage has 's', it is valid, and its secret part is here (not a stub)."""
    return "s" in row[11] and _valid(row) and row[14] not in ("", "#")


def _created(row: list[str]) -> int:
    return int(row[5]) if row[5].isdigit() else 0


def _signed_by(status: list[list[str]], signer: str) -> bool:
    """gpg made exactly one signature, and with the key asked for."""
    created = [s for s in status if s[0] == "SIG_CREATED"]
    return len(created) == 1 and len(created[0]) >= 7 and created[0][6].upper() == signer.upper()


# RFC 4880 §9.4 hash numbers, as gpg reports them in SIG_CREATED, to RFC 3156 micalg names.
_MICALG = {
    1: "pgp-md5",
    2: "pgp-sha1",
    3: "pgp-ripemd160",
    8: "pgp-sha256",
    9: "pgp-sha384",
    10: "pgp-sha512",
    11: "pgp-sha224",
}


def stop_agent(home: Path) -> None:
    """Stop the gpg-agent serving a GnuPG home, if one runs (gpg starts them on demand)."""
    gpgconf = shutil.which("gpgconf")
    if gpgconf is None:
        return
    subprocess.run(
        [gpgconf, "--homedir", str(home), "--kill", "gpg-agent"],
        capture_output=True,
        check=False,
        timeout=10,
    )


def prepare_home(home: Path) -> None:
    """Create the GnuPG home (mode 0700) with options that forbid network look-ups."""
    home.mkdir(parents=True, exist_ok=True)
    os.chmod(home, 0o700)
    conf = home / "gpg.conf"
    if not conf.exists():
        conf.write_text(_GPG_CONF, encoding="ascii")

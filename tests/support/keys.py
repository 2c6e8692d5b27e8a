"""Real OpenPGP keys for tests, generated with the real gpg, one at a time.

Generating keys with several gpg processes at once can silently lose keys, so
the factory is sequential. Each key is exported to armoured files; tests import
them where they need them.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import gnupg

from relay.core.gpg import STATUS_ENCODING


@dataclass(frozen=True)
class TestKey:
    name: str
    address: str
    fingerprint: str
    public: bytes
    secret: bytes
    public_file: Path
    secret_file: Path


class KeyFactory:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self._made: dict[str, TestKey] = {}

    def _home(self, name: str) -> Path:
        home = self.root / "gen" / name
        home.mkdir(parents=True, exist_ok=True)
        os.chmod(home, 0o700)
        return home

    def _export(self, gpg: gnupg.GPG, name: str, address: str, fpr: str) -> TestKey:
        public = gpg.export_keys(fpr, armor=True).encode()
        secret = gpg.export_keys(fpr, secret=True, armor=True, expect_passphrase=False).encode()
        pub_file = self.root / f"{name}.pub.asc"
        sec_file = self.root / f"{name}.sec.asc"
        pub_file.write_bytes(public)
        sec_file.write_bytes(secret)
        key = TestKey(name, address, fpr, public, secret, pub_file, sec_file)
        self._made[name] = key
        return key

    def make(
        self,
        name: str,
        address: str | None = None,
        *,
        kind: str = "ed25519",
        expire: str = "0",
        faked_time: str | None = None,
    ) -> TestKey:
        """kind: 'ed25519' (ed25519 + cv25519), 'rsa1024', 'rsa2048', 'sign-only'."""
        if name in self._made:
            return self._made[name]
        address = address or f"{name}@example.net"
        options = ["--no-random-seed-file"]
        if faked_time:
            options += ["--faked-system-time", faked_time]
        gpg = gnupg.GPG(gnupghome=str(self._home(name)), options=options)
        if kind == "ed25519":
            params = dict(
                key_type="EDDSA",
                key_curve="ed25519",
                key_usage="sign",
                subkey_type="ECDH",
                subkey_curve="cv25519",
                subkey_usage="encrypt",
            )
        elif kind == "sign-only":
            params = dict(key_type="EDDSA", key_curve="ed25519", key_usage="sign")
        elif kind.startswith("rsa"):
            bits = int(kind[3:])
            params = dict(
                key_type="RSA",
                key_length=bits,
                key_usage="sign",
                subkey_type="RSA",
                subkey_length=bits,
                subkey_usage="encrypt",
            )
        else:
            raise ValueError(kind)
        result = gpg.gen_key(
            gpg.gen_key_input(
                name_real=name, name_email=address, expire_date=expire, no_protection=True, **params
            )
        )
        assert result.fingerprint, result.stderr
        return self._export(gpg, name, address, str(result.fingerprint).upper())

    def expired(self, name: str, address: str | None = None) -> TestKey:
        """A key made in 2020 that expired one day later."""
        return self.make(name, address, expire="1d", faked_time="20200101T000000!")

    def revoked(self, name: str, address: str | None = None) -> TestKey:
        """A key whose exported public part carries its own revocation."""
        key = self.make(name, address)
        home = self._home(name)
        rev = (home / "openpgp-revocs.d" / f"{key.fingerprint}.rev").read_text()
        rev = rev.replace(
            ":-----BEGIN PGP PUBLIC KEY BLOCK-----", "-----BEGIN PGP PUBLIC KEY BLOCK-----"
        )
        gpg = gnupg.GPG(gnupghome=str(home), options=["--no-random-seed-file"])
        assert gpg.import_keys(rev).count >= 0
        public = gpg.export_keys(key.fingerprint, armor=True).encode()
        key.public_file.write_bytes(public)
        revoked = TestKey(
            key.name,
            key.address,
            key.fingerprint,
            public,
            key.secret,
            key.public_file,
            key.secret_file,
        )
        self._made[name] = revoked
        return revoked


class Keyring:
    """A separate GnuPG home holding one party's secret key (a member's mail client)."""

    def __init__(self, home: Path, *keys: TestKey, trusted_public: tuple[bytes, ...] = ()) -> None:
        home.mkdir(parents=True, exist_ok=True)
        os.chmod(home, 0o700)
        self.home = home
        self.gpg = gnupg.GPG(
            gnupghome=str(home), options=["--no-random-seed-file", "--trust-model", "always"]
        )
        # Copies signed by the Sequoia backend carry a binary salt notation (relay/core/gpg.py).
        self.gpg.encoding = STATUS_ENCODING
        for key in keys:
            self.gpg.import_keys(key.secret)
        for public in trusted_public:
            self.gpg.import_keys(public)

    def status(self, args: list[str], data: bytes) -> tuple[bytes, list[list[str]]]:
        """Run gpg directly; return stdout and the status lines."""
        proc = subprocess.run(
            [
                "gpg",
                "--homedir",
                str(self.home),
                "--batch",
                "--no-tty",
                "--status-fd",
                "2",
                "--trust-model",
                "always",
                *args,
            ],
            input=data,
            capture_output=True,
            check=False,
        )
        lines = [
            ln[9:].split(" ")
            for ln in proc.stderr.decode(errors="replace").splitlines()
            if ln.startswith("[GNUPG:] ")
        ]
        return proc.stdout, lines

    def decrypt(self, data: bytes) -> tuple[bytes, list[list[str]]]:
        return self.status(["--decrypt"], data)

    def clearsign(self, data: bytes, signer: str) -> bytes:
        out, _ = self.status(["--clearsign", "--local-user", signer], data)
        return out

    def detach_sign(self, data: bytes, signer: str, *, at: int | None = None) -> bytes:
        """A detached signature; `at` (a Unix time) dates it then, as a clock set wrong or
        a post made days ago would (gpg's --faked-system-time, frozen)."""
        faked = ["--faked-system-time", f"{at}!"] if at is not None else []
        out, _ = self.status([*faked, "--detach-sign", "--armor", "--local-user", signer], data)
        return out

    def sign_encrypt(self, data: bytes, signer: str, recipients: list[str]) -> bytes:
        args = ["--sign", "--encrypt", "--armor", "--local-user", signer]
        for r in recipients:
            args += ["--recipient", r]
        out, _ = self.status(args, data)
        return out

    def encrypt(self, data: bytes, recipients: list[str]) -> bytes:
        args = ["--encrypt", "--armor"]
        for r in recipients:
            args += ["--recipient", r]
        out, _ = self.status(args, data)
        return out

"""The GnuPG backend with real keys: what it signs, whom it encrypts to, what it believes.

The relay's home holds the list key and the members' public keys. Members act
through their own keyrings (separate GnuPG homes holding their secret key), so
every result is checked by a party other than the one that produced it.
"""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path

import pytest

from relay.core.crypto import Signature
from relay.core.errors import CryptoError, KeyProblem
from relay.core.gpg import GnuPG
from tests.support.keys import KeyFactory, Keyring
from tests.support.keys import TestKey as Key

LIST = "distributors@example.org"
DATA = b"Content-Type: text/plain\r\n\r\nEmbargoed until Thursday.\r\n"
# RFC 4880 §9.4 hash numbers (VALIDSIG field 8) to RFC 3156 micalg names.
MICALG = {"8": "pgp-sha256", "10": "pgp-sha512"}


class Relay:
    def __init__(self, home: Path, *members: Key) -> None:
        self.crypto = GnuPG(home)
        self.home = home
        self.fingerprint = self.crypto.generate_key("Distributors", LIST)
        self.public = self.crypto.export_public(self.fingerprint)
        for member in members:
            self.crypto.import_keys(member.public)

    def configure(self, line: str) -> None:
        """Add a line to gpg.conf after the backend is set up, as an operator might."""
        conf = self.home / "gpg.conf"
        conf.write_text(conf.read_text(encoding="ascii") + line + "\n", encoding="ascii")


@pytest.fixture(scope="module")
def alice(keys: KeyFactory) -> Key:
    return keys.make("alice")


@pytest.fixture(scope="module")
def bob(keys: KeyFactory) -> Key:
    return keys.make("bob")


@pytest.fixture(scope="module")
def relay(tmp_path_factory: pytest.TempPathFactory, alice: Key, bob: Key) -> Relay:
    return Relay(tmp_path_factory.mktemp("relay-gnupg"), alice, bob)


@pytest.fixture
def fresh_relay(tmp_path: Path, alice: Key, bob: Key) -> Relay:
    """A relay home of its own, for tests that change gpg.conf."""
    return Relay(tmp_path / "relay-gnupg", alice, bob)


def ring(home: Path, key: Key, *trusted: bytes) -> Keyring:
    return Keyring(home, key, trusted_public=trusted)


@pytest.fixture(scope="module")
def alice_ring(tmp_path_factory: pytest.TempPathFactory, alice: Key, relay: Relay) -> Keyring:
    return ring(tmp_path_factory.mktemp("alice"), alice, relay.public)


@pytest.fixture(scope="module")
def bob_ring(tmp_path_factory: pytest.TempPathFactory, bob: Key, relay: Relay) -> Keyring:
    return ring(tmp_path_factory.mktemp("bob"), bob, relay.public)


def keywords(status: list[list[str]]) -> list[str]:
    return [line[0] for line in status]


def enc_to(status: list[list[str]]) -> list[str]:
    return sorted(line[1] for line in status if line[0] == "ENC_TO")


def encryption_subkeys(keyring: Keyring, fingerprint: str) -> list[str]:
    listing, _ = keyring.status(["--with-colons", "--list-keys", fingerprint], b"")
    rows = [line.split(":") for line in listing.decode().splitlines()]
    return sorted(row[4] for row in rows if row[0] == "sub" and "e" in row[11])


def verify(keyring: Keyring, data: bytes, signature: bytes) -> list[list[str]]:
    """gpg --verify of a detached signature, as a member's client would run it."""
    with tempfile.NamedTemporaryFile(suffix=".asc") as sig:
        sig.write(signature)
        sig.flush()
        _, status = keyring.status(["--verify", sig.name, "-"], data)
    return status


def verdict_of(signature: Signature) -> tuple[bool, str | None, str]:
    return signature.valid, signature.fingerprint, signature.code


def validsig(status: list[list[str]]) -> list[str]:
    (line,) = [line for line in status if line[0] == "VALIDSIG"]
    return line


# Detached signatures


def test_new_home_forbids_network_key_lookups(tmp_path: Path) -> None:
    home = tmp_path / "relay-gnupg"
    GnuPG(home)
    lines = (home / "gpg.conf").read_text(encoding="ascii").splitlines()
    assert "no-auto-key-retrieve" in lines
    assert "auto-key-locate local" in lines
    assert home.stat().st_mode & 0o777 == 0o700


@pytest.mark.parametrize(("digest", "micalg"), [("SHA256", "pgp-sha256"), ("SHA512", "pgp-sha512")])
def test_sign_detached_reports_the_micalg_of_the_hash_gpg_used(
    digest: str, micalg: str, fresh_relay: Relay, alice: Key, tmp_path: Path
) -> None:
    fresh_relay.configure(f"digest-algo {digest}")
    signature, reported = fresh_relay.crypto.sign_detached(DATA, fresh_relay.fingerprint)
    assert reported == micalg
    assert signature.startswith(b"-----BEGIN PGP SIGNATURE-----")
    assert signature.strip().endswith(b"-----END PGP SIGNATURE-----")
    assert signature.isascii()
    # A member's client reads the hash from the signature packet itself.
    member = ring(tmp_path / "alice", alice, fresh_relay.public)
    line = validsig(verify(member, DATA, signature))
    assert MICALG[line[8]] == reported
    assert line[-1] == fresh_relay.fingerprint


def test_sign_detached_verifies_with_verify_detached(relay: Relay) -> None:
    signature, _ = relay.crypto.sign_detached(DATA, relay.fingerprint)
    verdict = relay.crypto.verify_detached(DATA, signature)
    assert verdict_of(verdict) == (True, relay.fingerprint, "GOODSIG")
    assert verdict.reason == ""


def test_sign_detached_uses_the_requested_key_among_several(fresh_relay: Relay) -> None:
    """Key rotation: the home holds two list keys, and the one asked for signs."""
    rotated = fresh_relay.crypto.generate_key("Distributors 2027", LIST)
    for signer in (fresh_relay.fingerprint, rotated):
        signature, _ = fresh_relay.crypto.sign_detached(DATA, signer)
        assert fresh_relay.crypto.verify_detached(DATA, signature).fingerprint == signer


# python-gnupg passes the signer as --default-key; gpg ignores a --default-key whose
# secret key it lacks (only a warning) and signs with the first secret key it holds.
@pytest.mark.parametrize("operation", ["sign_detached", "sign_encrypt"])
def test_signing_without_the_signers_secret_key_is_refused(
    operation: str, relay: Relay, alice: Key
) -> None:
    with pytest.raises(CryptoError):
        if operation == "sign_detached":
            relay.crypto.sign_detached(DATA, alice.fingerprint)
        else:
            relay.crypto.sign_encrypt(DATA, [alice.fingerprint], alice.fingerprint)


# A list key whose primary only certifies and whose subkey signs (as the Sequoia backend
# makes them): the subkey signs, and the primary is the signer a member's client reports.


def gpg_in(home: Path, *args: str, commands: str | None = None) -> str:
    """gpg in `home`, in batch mode without a passphrase; its colon-format output."""
    command = [
        *("gpg", "--homedir", str(home), "--batch", "--with-colons"),
        *("--passphrase", "", "--pinentry-mode", "loopback"),
        *(["--command-fd", "0"] if commands is not None else []),
        *args,
    ]
    return subprocess.run(
        command, input=commands, capture_output=True, text=True, check=True
    ).stdout


def subkey_signed_list(
    home: Path, sign_expires: str = "never", at: str | None = None
) -> tuple[GnuPG, str, str]:
    """A relay home with such a list key, made at `at` (gpg's faked time) if given: the
    backend, the primary's and the signing subkey's fingerprints."""
    crypto = GnuPG(home)
    faked = ["--faked-system-time", at] if at else []
    gpg_in(home, *faked, "--quick-gen-key", f"Distributors <{LIST}>", "ed25519", "cert", "never")
    (primary,) = [
        r.split(":")[9] for r in gpg_in(home, "--list-keys").splitlines() if r.startswith("fpr")
    ]
    gpg_in(home, *faked, "--quick-add-key", primary, "ed25519", "sign", sign_expires)
    gpg_in(home, *faked, "--quick-add-key", primary, "cv25519", "encr", "never")
    listing = gpg_in(home, "--with-subkey-fingerprint", "--list-secret-keys", primary)
    fingerprints = [r.split(":")[9] for r in listing.splitlines() if r.startswith("fpr")]
    assert len(fingerprints) == 3 and fingerprints[0] == primary
    return crypto, primary, fingerprints[1]


def test_a_list_key_with_a_signing_subkey_signs_as_its_primary(tmp_path: Path, alice: Key) -> None:
    crypto, primary, subkey = subkey_signed_list(tmp_path / "relay")
    crypto.import_keys(alice.public)
    member = ring(tmp_path / "alice", alice, crypto.export_public(primary))
    try:
        signature, micalg = crypto.sign_detached(DATA, primary)
        line = validsig(verify(member, DATA, signature))
        assert (line[1], line[-1], MICALG[line[8]]) == (subkey, primary, micalg)
        assert verdict_of(crypto.verify_detached(DATA, signature)) == (True, primary, "GOODSIG")

        plaintext, status = member.decrypt(crypto.sign_encrypt(DATA, [alice.fingerprint], primary))
        assert plaintext == DATA
        assert (validsig(status)[1], validsig(status)[-1]) == (subkey, primary)
        # The signer is a primary key: naming the subkey itself is refused.
        with pytest.raises(CryptoError, match="no usable secret signing key"):
            crypto.sign_detached(DATA, subkey)
    finally:
        crypto.close()


@pytest.mark.parametrize("state", ["expired", "revoked"])
def test_a_list_key_whose_signing_subkey_is_unusable_cannot_sign(
    state: str, tmp_path: Path, alice: Key
) -> None:
    home = tmp_path / "relay"
    if state == "expired":  # made in 2020, the signing subkey for one day
        crypto, primary, _ = subkey_signed_list(home, "1d", at="20200101T000000!")
    else:
        crypto, primary, _ = subkey_signed_list(home)
        crypto.sign_detached(DATA, primary)  # signs, and caches its signing key
        gpg_in(home, "--edit-key", primary, commands="key 1\nrevkey\ny\n0\n\ny\nsave\n")
        listing = gpg_in(home, "--list-secret-keys", primary)
        assert [r.split(":")[1] for r in listing.splitlines() if r.startswith("ssb")] == ["r", "u"]
    crypto.import_keys(alice.public)
    try:
        with pytest.raises(CryptoError, match=f"no usable secret signing key for {primary}"):
            crypto.sign_detached(DATA, primary)
        with pytest.raises(CryptoError, match="no usable secret signing key"):
            crypto.sign_encrypt(DATA, [alice.fingerprint], primary)
    finally:
        crypto.close()


# Encryption


def test_encrypt_to_one_key_only_that_key_decrypts(
    relay: Relay, alice: Key, alice_ring: Keyring, bob_ring: Keyring
) -> None:
    armour = relay.crypto.encrypt(DATA, [alice.fingerprint])
    assert armour.startswith(b"-----BEGIN PGP MESSAGE-----")
    plaintext, status = alice_ring.decrypt(armour)
    assert "DECRYPTION_OKAY" in keywords(status)
    assert plaintext == DATA
    assert enc_to(status) == encryption_subkeys(alice_ring, alice.fingerprint)
    assert "NEWSIG" not in keywords(status)  # encryption alone: nothing signed

    plaintext, status = bob_ring.decrypt(armour)
    assert "DECRYPTION_OKAY" not in keywords(status)
    assert "NO_SECKEY" in keywords(status)
    assert plaintext == b""
    # Not even the list can read what it sent: no key of its own was added.
    with pytest.raises(CryptoError, match="not encrypted to the list key"):
        relay.crypto.decrypt(armour)


def test_encrypt_without_a_usable_recipient_fails(relay: Relay) -> None:
    with pytest.raises(CryptoError):
        relay.crypto.encrypt(DATA, [])
    with pytest.raises(CryptoError):
        relay.crypto.encrypt(DATA, ["0123456789ABCDEF0123456789ABCDEF01234567"])


def test_sign_encrypt_is_signed_by_the_list_and_readable_by_the_member_only(
    relay: Relay, alice: Key, alice_ring: Keyring, bob_ring: Keyring
) -> None:
    armour = relay.crypto.sign_encrypt(DATA, [alice.fingerprint], relay.fingerprint)
    plaintext, status = alice_ring.decrypt(armour)
    assert plaintext == DATA
    assert "DECRYPTION_OKAY" in keywords(status)
    assert enc_to(status) == encryption_subkeys(alice_ring, alice.fingerprint)
    assert validsig(status)[-1] == relay.fingerprint
    assert "NO_SECKEY" in keywords(bob_ring.decrypt(armour)[1])


def test_decrypt_returns_the_posters_signature_and_recipients(
    relay: Relay, alice: Key, alice_ring: Keyring
) -> None:
    armour = alice_ring.sign_encrypt(DATA, alice.fingerprint, [relay.fingerprint])
    result = relay.crypto.decrypt(armour)
    assert result.plaintext == DATA
    assert result.signature is not None
    assert (result.signature.valid, result.signature.fingerprint) == (True, alice.fingerprint)
    assert list(result.recipients) == encryption_subkeys(alice_ring, relay.fingerprint)


@pytest.mark.parametrize("form", ["text", "signed only", "clearsigned", "to another member"])
def test_decrypt_of_anything_not_encrypted_to_the_list_raises(
    form: str, relay: Relay, alice: Key, bob: Key, alice_ring: Keyring
) -> None:
    data = {
        "text": lambda: DATA,
        "signed only": lambda: alice_ring.status(
            ["--sign", "--armor", "--local-user", alice.fingerprint], DATA
        )[0],
        "clearsigned": lambda: alice_ring.clearsign(DATA, alice.fingerprint),
        "to another member": lambda: relay.crypto.encrypt(DATA, [bob.fingerprint]),
    }[form]()
    assert data  # the input was really produced
    with pytest.raises(CryptoError):
        relay.crypto.decrypt(data)


# --no-encrypt-to: an operator's gpg.conf must never add recipients


@pytest.mark.parametrize("option", ["encrypt-to", "hidden-encrypt-to"])
def test_encrypt_to_lines_in_gpg_conf_add_no_recipient(
    option: str, fresh_relay: Relay, alice: Key, bob: Key, tmp_path: Path
) -> None:
    fresh_relay.configure(f"{option} {bob.fingerprint}")
    member = ring(tmp_path / "alice", alice, fresh_relay.public)
    mine = encryption_subkeys(member, alice.fingerprint)

    # The line is live: plain gpg in the same home adds a second recipient.
    control = subprocess.run(
        [
            *("gpg", "--homedir", str(fresh_relay.home), "--batch", "--trust-model", "always"),
            *("--armor", "--encrypt", "--recipient", alice.fingerprint),
        ],
        input=DATA,
        capture_output=True,
        check=True,
    ).stdout
    assert len([s for s in member.decrypt(control)[1] if s[0] == "ENC_TO"]) == 2

    for armour in (
        fresh_relay.crypto.encrypt(DATA, [alice.fingerprint]),
        fresh_relay.crypto.sign_encrypt(DATA, [alice.fingerprint], fresh_relay.fingerprint),
    ):
        plaintext, status = member.decrypt(armour)
        assert plaintext == DATA
        assert enc_to(status) == mine


# Verifying what others signed


@pytest.fixture(scope="module")
def stranger(keys: KeyFactory) -> Key:
    return keys.make("crypto-stranger")


def test_verify_detached_accepts_a_known_members_signature(
    relay: Relay, alice: Key, alice_ring: Keyring
) -> None:
    signature = alice_ring.detach_sign(DATA, alice.fingerprint)
    verdict = relay.crypto.verify_detached(DATA, signature)
    assert verdict_of(verdict) == (True, alice.fingerprint, "GOODSIG")


def test_verify_detached_rejects_a_tampered_message(
    relay: Relay, alice: Key, alice_ring: Keyring
) -> None:
    signature = alice_ring.detach_sign(DATA, alice.fingerprint)
    tampered = DATA.replace(b"Thursday", b"Thursdax")
    verdict = relay.crypto.verify_detached(tampered, signature)
    assert verdict_of(verdict) == (False, None, "BADSIG")
    assert verdict.reason == "the signature does not match the signed content"


def test_verify_detached_rejects_an_unknown_key(
    relay: Relay, stranger: Key, tmp_path: Path
) -> None:
    signature = ring(tmp_path / "stranger", stranger).detach_sign(DATA, stranger.fingerprint)
    assert signature.startswith(b"-----BEGIN PGP SIGNATURE-----")
    verdict = relay.crypto.verify_detached(DATA, signature)
    assert verdict_of(verdict) == (False, None, "ERRSIG")
    assert verdict.reason == "signed by an unknown key"


def test_verify_detached_rejects_an_expired_key(
    relay: Relay, keys: KeyFactory, tmp_path: Path
) -> None:
    old = keys.expired("crypto-old")
    # Signed while the key was still valid (its one day in 2020), checked today.
    signature, status = ring(tmp_path / "old", old).status(
        [
            *("--faked-system-time", "20200101T120000!"),
            *("--detach-sign", "--armor", "--local-user", old.fingerprint),
        ],
        DATA,
    )
    assert "SIG_CREATED" in keywords(status)
    relay.crypto.import_keys(old.public)
    verdict = relay.crypto.verify_detached(DATA, signature)
    assert verdict_of(verdict) == (False, None, "EXPKEYSIG")
    assert verdict.reason == "the signing key has expired"


def test_verify_detached_rejects_a_revoked_key(
    relay: Relay, keys: KeyFactory, tmp_path: Path
) -> None:
    gone = keys.revoked("crypto-gone")
    # The signer's own client still holds the key from before its revocation.
    signature = ring(tmp_path / "gone", gone).detach_sign(DATA, gone.fingerprint)
    assert signature.startswith(b"-----BEGIN PGP SIGNATURE-----")
    relay.crypto.import_keys(gone.public)
    verdict = relay.crypto.verify_detached(DATA, signature)
    assert verdict_of(verdict) == (False, None, "REVKEYSIG")
    assert verdict.reason == "the signing key is revoked"


def test_verify_detached_with_no_signature_at_all(relay: Relay) -> None:
    verdict = relay.crypto.verify_detached(DATA, b"not a signature\n")
    assert not verdict.valid and verdict.fingerprint is None


# Keys


def test_inspect_keys_describes_a_good_key_without_importing_it(
    relay: Relay, keys: KeyFactory
) -> None:
    carol = keys.make("crypto-carol", "carol@example.net")
    (info,) = relay.crypto.inspect_keys(carol.public)
    assert info.fingerprint == carol.fingerprint
    assert info.problem is None and info.can_encrypt and not info.secret
    assert any("carol@example.net" in uid for uid in info.uids)
    assert relay.crypto.key_info(carol.fingerprint) is None


def test_a_secret_key_is_reported_and_refused(relay: Relay, keys: KeyFactory) -> None:
    dave = keys.make("crypto-dave")
    (info,) = relay.crypto.inspect_keys(dave.secret)
    assert info.secret
    with pytest.raises(KeyProblem, match="secret key"):
        relay.crypto.import_keys(dave.secret)
    assert relay.crypto.key_info(dave.fingerprint) is None


@pytest.mark.parametrize(
    ("kind", "problem"),
    [
        ("expired", "key has expired"),
        ("revoked", "key is revoked"),
        ("rsa1024", "RSA key of 1024 bits is too weak (at least 2048 required)"),
    ],
)
def test_unusable_keys_are_reported(
    kind: str, problem: str, keys: KeyFactory, relay: Relay
) -> None:
    key = {
        "expired": lambda: keys.expired("crypto-old"),
        "revoked": lambda: keys.revoked("crypto-gone"),
        "rsa1024": lambda: keys.make("crypto-weak", kind="rsa1024"),
    }[kind]()
    (info,) = relay.crypto.inspect_keys(key.public)
    assert info.fingerprint == key.fingerprint
    assert info.problem == problem
    assert not info.can_encrypt or kind == "rsa1024"
    # Importing is not refused, but the imported key still says why it cannot be used.
    assert relay.crypto.import_keys(key.public) == [key.fingerprint]
    imported = relay.crypto.key_info(key.fingerprint)
    assert imported is not None and imported.problem == problem


def test_import_keys_refuses_a_file_without_a_key(relay: Relay) -> None:
    with pytest.raises(KeyProblem, match="no OpenPGP public key"):
        relay.crypto.import_keys(b"-----BEGIN PGP PUBLIC KEY BLOCK-----\n\nnonsense\n")
    assert relay.crypto.inspect_keys(b"") == []

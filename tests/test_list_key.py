"""The list's public key, published (`relay key export`, a Web Key Directory, the Autocrypt
header of every copy), checked the way members use it: a copy's list signature cannot be
checked without the key, and verifies with it in gpg and in Sequoia's `sq`.

Real gpg, gpg-wks-client and sq; real SMTP for the copy delivered end to end.
"""

from __future__ import annotations

import base64
import email
import email.policy
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from relay.app import list_key
from relay.cli.root import cli
from relay.core.gpg import GnuPG
from tests.support import backends
from tests.support.keys import KeyFactory
from tests.support.keys import TestKey as Key
from tests.support.mail import pgp_mime_signed, text_entity
from tests.support.relayhome import LIST, RelayHome, RelayThread, distributors
from tests.support.relayhome import smtp_post as _post
from tests.support.smtpsink import SmtpSink

WKS_CLIENT = shutil.which("gpg-wks-client") or "/usr/lib/gnupg/gpg-wks-client"
SQ = shutil.which("sq")
BODY = "EMBARGOED until further notice.\n\nA flaw in kube-proxy (CVE-2026-31337).\n"


def gpg(home: Path, *args: str, data: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    """gpg as a member runs it: its own home, no options of the relay's."""
    home.mkdir(parents=True, exist_ok=True)
    os.chmod(home, 0o700)
    return subprocess.run(
        ["gpg", "--homedir", str(home), "--batch", *args],
        input=data,
        capture_output=True,
        check=False,
    )


def listing(home: Path, key: bytes) -> list[list[str]]:
    """`gpg --show-keys --with-colons` of `key` (armoured or binary): one row per line."""
    out = gpg(home, "--with-colons", "--show-keys", data=key)
    assert out.returncode == 0, out.stderr
    return [line.split(":") for line in out.stdout.decode().splitlines()]


def packets(home: Path, key: bytes) -> list[str]:
    """The kinds of the OpenPGP packets in `key`, in order ("public key packet", ...)."""
    out = gpg(home, "--list-packets", data=key)
    return [line[1:].split(":")[0] for line in out.stdout.decode().splitlines() if line[:1] == ":"]


def export(home: RelayHome, *args: str) -> subprocess.CompletedProcess[bytes]:
    """`relay key export` as its own process, stdout and stderr apart (`> list.asc`)."""
    return subprocess.run(
        [sys.executable, "-m", "relay", "--config", str(home.config_path), "key", "export", *args],
        capture_output=True,
        check=False,
    )


def wkd_hash(address: str) -> str:
    """gpg's own WKD hash of `address`."""
    out = subprocess.run(
        [WKS_CLIENT, "--print-wkd-hash", address], capture_output=True, text=True, check=True
    )
    hashed, _, shown = out.stdout.strip().partition(" ")
    assert shown == address.lower()
    return hashed


@pytest.fixture
def home(tmp_path: Path, keys: KeyFactory, sink: SmtpSink) -> RelayHome:
    # A list policy with words of its own, wrapped by its author at 81 columns.
    policy = '[embargo]\npolicy = "kubernetes-distributors"\n'
    return distributors(tmp_path, keys, sink.port, members=1, extra=policy)


# The WKD hash: a pure function, and the same as gpg's


def test_wkd_hash_is_the_drafts_test_vector() -> None:
    assert list_key.wkd_hash("Joe.Doe") == "iy9q119eutrkn8s1mk4r39qejnbu3n5q"
    assert list_key.zbase32(b"") == ""
    assert list_key.zbase32(b"\x00") == "yy"
    assert list_key.zbase32(b"\xff") == "9h"


@pytest.mark.parametrize(
    "address",
    [LIST, "Joe.Doe@Example.ORG", "distributors-announce@kubernetes.io", "a+b.C_d@x.example"],
)
def test_wkd_hash_matches_gpg_wks_client(address: str) -> None:
    local = address.rpartition("@")[0]
    assert list_key.wkd_hash(local) == wkd_hash(address)


def test_autocrypt_field_folds_within_78_columns() -> None:
    longer = "announcements-" * 5 + "list@security.example.org"  # no room on one line
    for address in (LIST, "a-very-long-list-name-for-announcements@security.example.org", longer):
        field = list_key.autocrypt_field(address, bytes(range(256)) * 4)
        assert field.endswith(b"\r\n") and field.isascii()
        lines = field[:-2].split(b"\r\n")
        # Longer only where a line holds one word that cannot break (the address).
        assert all(len(line) <= 78 or b" " not in line.strip() for line in lines), lines
        assert all(len(line) <= 998 for line in lines)
        assert len(lines) >= 12  # 1 KiB of keydata cannot sit on one line
        assert all(line.startswith(b" ") for line in lines[1:])
        value = b"".join(lines).decode().removeprefix("Autocrypt: ")
        attributes = dict(part.strip().split("=", 1) for part in value.split(";"))
        assert attributes["addr"] == address and attributes["prefer-encrypt"] == "mutual"
        assert base64.b64decode("".join(attributes["keydata"].split())) == bytes(range(256)) * 4
    with pytest.raises(ValueError):
        list_key.autocrypt_field("a@b.example; prefer-encrypt=nopreference", b"x")


# relay key export


def test_export_is_a_clean_importable_file_with_the_fingerprint_on_stderr(
    home: RelayHome, tmp_path: Path
) -> None:
    done = export(home)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(b"-----BEGIN PGP PUBLIC KEY BLOCK-----\n")
    assert done.stdout.endswith(b"-----END PGP PUBLIC KEY BLOCK-----\n")
    assert done.stderr.decode().splitlines() == [home.list_fpr]

    member = tmp_path / "member-gnupg"
    imported = gpg(member, "--status-fd", "1", "--import", data=done.stdout)
    assert imported.returncode == 0, imported.stderr
    assert f"IMPORT_OK 1 {home.list_fpr}".encode() in imported.stdout
    rows = listing(member, done.stdout)
    assert next(r[9] for r in rows if r[0] == "fpr") == home.list_fpr
    assert [r[9] for r in rows if r[0] == "uid"] == [f"Test distributors <{LIST}>"]
    assert not any(r[0] in ("sec", "ssb") for r in rows)


@backends.gnupg_only(
    "it edits the relay's GnuPG home with gpg (test_crypto_parity.py has Sequoia's)"
)
def test_export_is_minimal_only_the_lists_user_id_and_no_third_party_signature(
    home: RelayHome, keys: KeyFactory, tmp_path: Path
) -> None:
    relay_home = home.settings.gnupg.home
    # Another user ID on the list key, and a member's certification of it in the keyring.
    added = gpg(relay_home, "--quick-add-uid", home.list_fpr, "Old name <old@example.org>")
    assert added.returncode == 0, added.stderr
    member = keys.make("distro0", "security@distro0.example")
    certifier = tmp_path / "certifier"
    gpg(certifier, "--import", data=member.secret)
    gpg(certifier, "--import", data=home.list_public)
    signed = gpg(certifier, "--yes", "--quick-sign-key", home.list_fpr)
    assert signed.returncode == 0, signed.stderr
    certified = gpg(certifier, "--export", home.list_fpr).stdout
    gpg(relay_home, "--import", data=certified)
    full = gpg(relay_home, "--export", home.list_fpr).stdout
    assert packets(tmp_path / "probe", full).count("user ID packet") == 2
    assert member.fingerprint[-16:].encode() in gpg(relay_home, "--list-sigs").stdout

    armoured = export(home).stdout
    kinds = packets(tmp_path / "probe", armoured)
    assert kinds == [
        "public key packet",
        "user ID packet",
        "signature packet",
        "public sub key packet",
        "signature packet",
    ]
    dump = gpg(tmp_path / "probe", "--list-packets", data=armoured).stdout.decode()
    assert member.fingerprint[-16:] not in dump  # no certification by anyone else
    assert "old@example.org" not in dump


def test_export_without_a_list_key_is_one_line_and_exit_1(tmp_path: Path) -> None:
    config = tmp_path / "relay.toml"
    shutil.copy(Path(__file__).resolve().parent.parent / "config.example.toml", config)
    result = CliRunner().invoke(cli, ["--config", str(config), "key", "export"])
    assert result.exit_code == 1
    assert result.stderr == "error: the list has no key yet; run 'relay init'\n"
    assert result.stdout == ""


# The Web Key Directory


def test_wkd_tree_for_both_methods_world_readable_with_gpgs_hash(
    home: RelayHome, tmp_path: Path
) -> None:
    root = tmp_path / "www"
    done = subprocess.run(
        [
            "sh",
            "-c",
            'umask 077 && exec "$0" -m relay --config "$1" key export --wkd "$2"',
            sys.executable,
            str(home.config_path),
            str(root),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert home.list_fpr in done.stdout
    hashed = wkd_hash(LIST)
    domain = LIST.split("@")[1]
    keys_at = [
        root / ".well-known/openpgpkey" / domain / "hu" / hashed,
        root / ".well-known/openpgpkey/hu" / hashed,
    ]
    policies = [
        root / ".well-known/openpgpkey" / domain / "policy",
        root / ".well-known/openpgpkey/policy",
    ]
    for path in keys_at + policies:
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path
        for folder in path.relative_to(root).parents:
            assert stat.S_IMODE((root / folder).stat().st_mode) == 0o755, folder
    assert all(path.read_bytes() == b"" for path in policies)
    exported = export(home).stdout
    for path in keys_at:
        key = path.read_bytes()
        assert not key.startswith(b"-----")  # binary, as the draft asks
        rows = listing(tmp_path / "probe", key)
        assert next(r[9] for r in rows if r[0] == "fpr") == home.list_fpr
        assert [r[9] for r in rows if r[0] == "uid"] == [f"Test distributors <{LIST}>"]
        assert key == gpg(tmp_path / "probe", "--dearmor", data=exported).stdout
    # Written again (a refreshed key): replaced in place, nothing else left behind.
    assert export(home, "--wkd", str(root)).returncode == 0
    assert sorted(p for p in root.rglob("*") if p.is_file()) == sorted(keys_at + policies)


# A copy delivered end to end, checked as its member checks it


def _delivered_copy(home: RelayHome, keys: KeyFactory, sink: SmtpSink) -> tuple[bytes, Key]:
    src = keys.make("src", "src@example.org")
    post = pgp_mime_signed(
        home.client(src),
        src.fingerprint,
        text_entity(BODY, subject="CVE-2026-31337"),
        subject="CVE-2026-31337",
        sender=src.address,
        to=LIST,
    )
    with RelayThread(home.settings) as relay:
        code, reply = relay.run(_post(relay.port, post))
        assert code == 250, reply
        (copy,) = sink.wait_for(1, timeout=60)
    return copy.data, keys.make("distro0", "security@distro0.example")


def test_the_list_signature_verifies_in_gpg_only_once_the_exported_key_is_imported(
    home: RelayHome, keys: KeyFactory, sink: SmtpSink, tmp_path: Path
) -> None:
    wire, member = _delivered_copy(home, keys, sink)
    client = tmp_path / "member"
    gpg(client, "--import", data=member.secret)
    copy = tmp_path / "copy.eml"
    copy.write_bytes(wire)

    before = gpg(client, "--decrypt", str(copy))
    assert before.returncode == 2
    assert b"Can't check signature: No public key" in before.stderr

    (tmp_path / "list.asc").write_bytes(export(home).stdout)
    assert gpg(client, "--import", str(tmp_path / "list.asc")).returncode == 0
    after = gpg(client, "--decrypt", str(copy))
    assert after.returncode == 0, after.stderr
    assert b'Good signature from "Test distributors <distributors@example.org>"' in after.stderr
    assert b"CVE-2026-31337" in after.stdout and before.stdout == after.stdout

    # The notice above the post, as the member reads it: no line over 72 characters.
    root = email.message_from_bytes(after.stdout, policy=email.policy.default)
    notice = root.get_payload()[0].get_content()
    assert "Rules of this list" in notice and "Copy reference" in notice
    assert [line for line in notice.splitlines() if len(line) > 72] == []


@pytest.mark.skipif(SQ is None, reason="Sequoia's sq is not installed")
def test_the_list_signature_verifies_in_sq_over_the_signed_bytes(
    home: RelayHome, keys: KeyFactory, sink: SmtpSink, tmp_path: Path
) -> None:
    # A copy is signed and encrypted in one OpenPGP message (RFC 3156 §6.2): the signed
    # bytes are the decrypted MIME root itself, CRLF line ends, with no detached part.
    wire, member = _delivered_copy(home, keys, sink)
    outer = email.message_from_bytes(wire, policy=email.policy.default)
    armour = tmp_path / "encrypted.asc"
    armour.write_bytes(outer.get_payload()[1].get_payload(decode=True))
    list_asc = tmp_path / "list.asc"
    list_asc.write_bytes(export(home).stdout)
    client = tmp_path / "member"
    gpg(client, "--import", data=member.secret)
    root = gpg(client, "--decrypt", str(armour)).stdout
    assert b'protected-headers="v1"' in root and b"\n" not in root.replace(b"\r\n", b"")

    def sq(*args: str) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run([str(SQ), *args], capture_output=True, check=False)

    key_args = ["--recipient-key", str(member.secret_file), "--signer-cert", str(list_asc)]
    opened = sq("decrypt", *key_args, str(armour))
    assert opened.returncode == 0, opened.stderr
    assert opened.stdout == root

    # The signed message alone, out of its encryption: verified by sq against the list key,
    # and refused against any other.
    signed = tmp_path / "signed.pgp"
    unwrapped = sq("packet", "decrypt", *key_args[:2], "--output", str(signed), str(armour))
    assert unwrapped.returncode == 0, unwrapped.stderr
    verified = sq("verify", "--signer-cert", str(list_asc), str(signed))
    assert verified.returncode == 0, verified.stderr
    assert verified.stdout == root
    assert sq("verify", "--signer-cert", str(member.public_file), str(signed)).returncode != 0


def test_the_autocrypt_header_carries_the_exported_key_and_suffices_to_verify(
    home: RelayHome, keys: KeyFactory, sink: SmtpSink, tmp_path: Path
) -> None:
    wire, member = _delivered_copy(home, keys, sink)
    outer = email.message_from_bytes(wire, policy=email.policy.compat32)
    (field,) = outer.get_all("Autocrypt")
    value = " ".join(field.split())
    attributes = dict(part.strip().split("=", 1) for part in value.split(";"))
    assert (attributes["addr"], attributes["prefer-encrypt"]) == (LIST, "mutual")
    keydata = base64.b64decode("".join(attributes["keydata"].split()), validate=True)
    rows = listing(tmp_path / "probe", keydata)
    assert next(r[9] for r in rows if r[0] == "fpr") == home.list_fpr
    assert [r[9] for r in rows if r[0] == "uid"] == [f"Test distributors <{LIST}>"]
    # The encryption subkey; with Sequoia's key also its signing subkey (its primary does
    # not sign), without which the header could not check the copy's signature.
    subkeys = [True] if backends.BACKEND == backends.GNUPG else [False, True]
    assert ["e" in r[11] for r in rows if r[0] == "sub"] == subkeys
    # The same key as `relay key export` prints.
    exported = gpg(tmp_path / "probe", "--dearmor", data=export(home).stdout).stdout
    assert keydata == exported

    # Taken from the header alone, it checks the copy's signature.
    client = tmp_path / "member"
    gpg(client, "--import", data=member.secret)
    assert gpg(client, "--import", data=keydata).returncode == 0
    opened = gpg(client, "--decrypt", data=wire)
    assert opened.returncode == 0, opened.stderr
    assert b"Good signature" in opened.stderr


@backends.gnupg_only("it deletes the key from the relay's GnuPG home with gpg")
def test_autocrypt_keydata_is_exported_once_per_key(home: RelayHome) -> None:
    crypto = GnuPG(home.settings.gnupg.home)
    first = list_key.autocrypt_header(crypto, home.list_fpr, LIST)
    assert first is not None and first.startswith(b"Autocrypt: addr=" + LIST.encode())
    # With the key gone from the keyring, a second export would fail: the header is the
    # one computed first, for every later copy of this process.
    gone = gpg(home.settings.gnupg.home, "--yes", "--delete-secret-and-public-key", home.list_fpr)
    assert gone.returncode == 0, gone.stderr
    assert list_key.autocrypt_header(crypto, home.list_fpr, LIST.upper()) == first
    # A new keyring reads its own: there, the key is no more (and that is no error).
    assert list_key.autocrypt_header(GnuPG(home.settings.gnupg.home), home.list_fpr, LIST) is None

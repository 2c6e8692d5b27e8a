"""Two nodes on one database, each with a GnuPG home of its own: the members', senders' and
grant holders' keys follow the database (relay/store/public_keys.py), and the list key
reaches a new node only encrypted (`relay node export-key|import-key`). Real gpg."""

from __future__ import annotations

import os
import re
import stat
import subprocess
import time
from pathlib import Path

import pytest
from sqlalchemy import select

from relay.app import admin, key_refresh, members
from relay.core.config import load
from relay.core.gpg import GnuPG
from relay.model import AuditEvent, MemberKey, PublicKey
from relay.store import key_owners, public_keys
from tests.support import backends
from tests.support.cli import CliRelay, set_up
from tests.support.keys import KeyFactory
from tests.support.relayhome import RelayThread

ACTOR = "cli:test"
PASSPHRASE = "a long enough passphrase for a node"
ENV = {"RELAY_NODE_PASSPHRASE": PASSPHRASE}


def second_node(first: CliRelay, root: Path, extra: str = "") -> CliRelay:
    """Another node of `first`'s relay: its configuration, its database, a home of its own."""
    url = first.settings.storage.database_url
    text = re.sub(
        r"^database_url = .*$", f'database_url = "{url}"', first.config.read_text(), flags=re.M
    )
    root.mkdir(parents=True)
    config = root / "relay.toml"
    config.write_text(text + extra, encoding="utf-8")
    settings = load(config)
    assert settings.gnupg.home != first.settings.gnupg.home
    return CliRelay(config, settings, admin.open_database(settings))


@pytest.fixture
def nodes(tmp_path: Path, keys: KeyFactory) -> tuple[CliRelay, CliRelay]:
    (tmp_path / "a").mkdir()
    first = set_up(tmp_path / "a", keys, [])
    return first, second_node(first, tmp_path / "b")


def crypto_of(node: CliRelay) -> GnuPG:
    return admin.open_keyring(node.settings)


def carry_list_key(first: CliRelay, second: CliRelay, tmp_path: Path) -> Path:
    exported = tmp_path / "list-key.gpg"
    first("node", "export-key", "--to", str(exported), env=ENV)
    second("node", "import-key", str(exported), env=ENV)
    return exported


def actions(node: CliRelay) -> list[str]:
    with node.db.transaction() as session:
        return list(session.scalars(select(AuditEvent.action).order_by(AuditEvent.id)))


# Keys follow the database


def test_a_member_added_through_one_node_reaches_the_other_keyring(
    nodes: tuple[CliRelay, CliRelay], keys: KeyFactory
) -> None:
    first, second = nodes
    alice = keys.make("node-alice", "security@alice.example")
    members.add_member(
        first.db, crypto_of(first), first.settings, alice.address, "Alice", alice.public, ACTOR
    )
    other = crypto_of(second)
    assert other.key_info(alice.fingerprint) is None

    count, newest = public_keys.follow(second.db, other, None)
    assert count == 1 and newest is not None
    info = other.key_info(alice.fingerprint)
    assert info is not None and info.problem is None and not info.secret
    # Nothing newer: nothing counted, the mark stays.
    assert public_keys.follow(second.db, other, newest) == (0, newest)


def test_a_revocation_imported_on_one_node_reaches_the_other(
    nodes: tuple[CliRelay, CliRelay], keys: KeyFactory
) -> None:
    first, second = nodes
    frank = keys.make("node-frank", "security@frank.example")
    here, there = crypto_of(first), crypto_of(second)
    members.add_member(first.db, here, first.settings, frank.address, "F", frank.public, ACTOR)
    _, seen = public_keys.follow(second.db, there, None)
    assert key_owners.usable_keys(there, [frank.fingerprint])[0] == [frank.fingerprint]

    revoked = keys.revoked("node-frank")
    done, released = key_refresh.refresh_keys(first.db, here, revoked.public, ACTOR)
    assert [(r.fingerprint, r.status) for r in done] == [(frank.fingerprint, "revoked")]
    assert done[0].owners == [f"member {frank.address}"] and released == 0

    count, _ = public_keys.follow(second.db, there, seen)
    assert count == 1
    info = there.key_info(frank.fingerprint)
    assert info is not None and info.revoked
    usable, problem = key_owners.usable_keys(there, [frank.fingerprint])
    assert usable == [] and "revoked" in (problem or "")
    # The original export, imported again, does not undo the revocation.
    there.import_keys(frank.public)
    again = there.key_info(frank.fingerprint)
    assert again is not None and again.revoked


def test_refresh_refuses_a_key_nobody_on_the_list_holds(
    nodes: tuple[CliRelay, CliRelay], keys: KeyFactory
) -> None:
    first, _ = nodes
    stranger = keys.make("node-stranger")
    key_file = stranger.public_file
    result = first("key", "refresh", str(key_file), code=1)
    assert "no member, sender or grant holds" in result.stderr
    assert crypto_of(first).key_info(stranger.fingerprint) is None


def test_senders_and_grant_holders_keys_are_stored_with_their_rows(
    nodes: tuple[CliRelay, CliRelay], keys: KeyFactory, tmp_path: Path
) -> None:
    first, second = nodes
    src, distro = keys.make("node-src"), keys.make("node-distro", "security@nd.example")
    dev = keys.make("node-dev", "dev@nd.example")
    first("sender", "add", src.address, "--key", str(src.public_file))
    first("member", "add", distro.address, "--name", "ND", "--key", str(distro.public_file))
    first("advisory", "create", "ADV-1", "--title", "a flaw")
    args = ["ADV-1", dev.address, "--key", str(dev.public_file), "--for", distro.address]
    first("share", "add", *args)
    with first.db.transaction() as session:
        stored = set(session.scalars(select(PublicKey.fingerprint)))
    assert stored == {src.fingerprint, distro.fingerprint, dev.fingerprint}

    # The second node, once it has the list key, runs commands on what it followed.
    carry_list_key(first, second, tmp_path)
    public_keys.follow(second.db, crypto_of(second), None)
    listed = {k["fingerprint"]: k["status"] for k in second.json("key", "list")}
    assert listed[src.fingerprint] == "usable" and listed[dev.fingerprint] == "usable"
    [sender] = second.json("sender", "list")
    assert sender["usable"] and sender["fingerprints"] == [src.fingerprint]


def test_keys_an_older_installation_held_only_in_its_keyring_are_stored_by_init(
    nodes: tuple[CliRelay, CliRelay], keys: KeyFactory
) -> None:
    first, _ = nodes
    old = keys.make("node-old", "security@old.example")
    members.add_member(
        first.db, crypto_of(first), first.settings, old.address, "Old", old.public, ACTOR
    )
    with first.db.transaction() as session:  # as before the table was used
        session.execute(PublicKey.__table__.delete())
        assert session.scalar(select(MemberKey.fingerprint)) == old.fingerprint
    first("init")
    with first.db.transaction() as session:
        row = session.get(PublicKey, old.fingerprint)
        assert row is not None and b"BEGIN PGP PUBLIC KEY BLOCK" in row.data
    assert public_keys.backfill(first.db, crypto_of(first)) == 0  # done once


def test_a_running_node_follows_within_check_interval(tmp_path: Path, keys: KeyFactory) -> None:
    (tmp_path / "a").mkdir()
    first = set_up(tmp_path / "a", keys, [])
    fast = '\n[cluster]\nnode_name = "b"\nfailover_after = "3s"\n'
    fast += '[embargo]\ncheck_interval = "1s"\n'
    second = second_node(first, tmp_path / "b", fast)
    carry_list_key(first, second, tmp_path)
    bob = keys.make("node-bob", "security@bob.example")
    with RelayThread(second.settings, dispatch=False) as running:
        assert running.relay is not None
        crypto = running.relay.crypto
        first("member", "add", bob.address, "--name", "Bob", "--key", str(bob.public_file))
        deadline = time.monotonic() + 20
        while crypto.key_info(bob.fingerprint) is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert crypto.key_info(bob.fingerprint) is not None
        assert "keys" not in running.relay.health.failing


# The list key for a new node


def test_export_and_import_give_the_new_node_the_same_list_key(
    nodes: tuple[CliRelay, CliRelay], tmp_path: Path
) -> None:
    first, second = nodes
    list_fpr = key_owners.list_key(crypto_of(first)).fingerprint
    exported = tmp_path / "list-key.gpg"
    secret = tmp_path / "passphrase"
    secret.write_text(PASSPHRASE + "\n", encoding="utf-8")
    out = first("node", "export-key", "--to", str(exported), "--passphrase-file", str(secret))
    assert list_fpr in out.stdout
    assert stat.S_IMODE(exported.stat().st_mode) == 0o600

    # Encrypted under the passphrase: a symmetric packet, no secret key in the clear.
    data = exported.read_bytes()
    assert data.startswith(b"-----BEGIN PGP MESSAGE-----")
    assert b"PRIVATE KEY" not in data
    packets = _list_packets(exported, tmp_path / "empty-home")
    # AES256 under an iterated and salted s2k at the most iterations; its hash is SHA-512
    # with gpg, SHA-256 with Sequoia (pysequoia chooses it).
    digest = "hash 10" if backends.BACKEND == backends.GNUPG else "hash 8"
    assert ":symkey enc packet:" in packets and "cipher 9" in packets
    assert f"s2k 3, {digest}" in packets and "65011712" in packets
    assert "count 65011712" in packets and "encrypted data packet:" in packets
    assert "secret key packet" not in packets and "secret" not in packets

    done = second("node", "import-key", str(exported), "--passphrase-file", str(secret))
    assert f"list key {list_fpr} imported" in done.stdout
    assert key_owners.list_key(crypto_of(second)).fingerprint == list_fpr
    # The new node opens the database, and `relay init` there makes no key of its own.
    assert "already present" in second("init").stdout
    again = second("node", "import-key", str(exported), "--passphrase-file", str(secret))
    assert "was already" in again.stdout
    assert actions(first).count("list.key_exported") == 1
    assert actions(first).count("list.key_imported") == 2


def test_a_wrong_passphrase_or_a_missing_file_fails_cleanly(
    nodes: tuple[CliRelay, CliRelay], tmp_path: Path
) -> None:
    first, second = nodes
    exported = tmp_path / "list-key.gpg"
    first("node", "export-key", "--to", str(exported), env=ENV)
    wrong = second(
        "node", "import-key", str(exported), code=1, env={"RELAY_NODE_PASSPHRASE": "not it"}
    )
    assert "wrong passphrase" in wrong.stderr
    assert not [k for k in crypto_of(second).list_keys() if k.secret]

    missing = second("node", "import-key", str(tmp_path / "nowhere.gpg"), code=1, env=ENV)
    assert "cannot read" in missing.stderr
    bare = second("node", "import-key", str(exported), code=1, env={"RELAY_NODE_PASSPHRASE": ""})
    assert "no passphrase" in bare.stderr
    not_ours = tmp_path / "public.asc"
    not_ours.write_bytes(
        crypto_of(first).export_public(key_owners.list_key(crypto_of(first)).fingerprint)
    )
    refused = second("node", "import-key", str(not_ours), code=1, env=ENV)
    assert "not a passphrase-encrypted key file" in refused.stderr


def test_export_refuses_a_short_passphrase_and_an_existing_file(
    nodes: tuple[CliRelay, CliRelay], tmp_path: Path
) -> None:
    first, _ = nodes
    target = tmp_path / "list-key.gpg"
    short = first(
        "node", "export-key", "--to", str(target), code=1, env={"RELAY_NODE_PASSPHRASE": "short"}
    )
    assert "at least 12 characters" in short.stderr and not target.exists()
    target.write_text("keep me", encoding="utf-8")
    exists = first("node", "export-key", "--to", str(target), code=1, env=ENV)
    assert "exists" in exists.stderr and target.read_text(encoding="utf-8") == "keep me"


def test_import_refuses_a_home_with_another_list_key_and_init_makes_none(
    nodes: tuple[CliRelay, CliRelay], tmp_path: Path
) -> None:
    first, second = nodes
    # `relay init` on the new node makes no list key of its own: the database has one.
    refused = second("init", code=1)
    assert "relay node import-key" in refused.stderr
    assert not [k for k in crypto_of(second).list_keys() if k.secret]

    exported = tmp_path / "list-key.gpg"
    first("node", "export-key", "--to", str(exported), env=ENV)
    other = crypto_of(second).generate_key("Another list", "other@example.org")
    clash = second("node", "import-key", str(exported), code=1, env=ENV)
    assert "already holds another secret key" in clash.stderr and other in clash.stderr
    assert [k.fingerprint for k in crypto_of(second).list_keys() if k.secret] == [other]


def _list_packets(path: Path, home: Path) -> str:
    """What gpg sees in the file without the passphrase (a fresh home, no agent cache)."""
    home.mkdir(mode=0o700)
    out = subprocess.run(
        [
            "gpg",
            "--homedir",
            str(home),
            "--batch",
            "--pinentry-mode",
            "error",
            "--list-packets",
            str(path),
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
        env={**os.environ, "GNUPGHOME": str(home)},
    )
    return out.stdout

"""The list key's keyring, as `[gnupg] backend` chooses it, and `relay keyring migrate`
between GnuPG and Sequoia: real gpg, real pysequoia, real SQLite, the real `relay` command."""

from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from pysequoia.packet import PacketPile, Tag

from relay.app import admin
from relay.cli.root import cli
from relay.core.config import load
from relay.core.errors import ConfigError, CryptoError
from relay.core.gpg import GnuPG
from relay.core.keyrings import open_keyring
from relay.core.sequoia import Sequoia
from relay.model import AuditEvent
from relay.store import key_owners
from tests.support.keys import KeyFactory
from tests.support.relayhome import open_sealed

ROOT = Path(__file__).resolve().parent.parent
PASSPHRASE = "correct horse battery staple"


def relay(config: Path, *args: str, code: int = 0, env: dict[str, str] | None = None) -> Result:
    result = CliRunner().invoke(cli, ["--config", str(config), *args], env=env)
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    return result


def configure(folder: Path, gnupg: str) -> Path:
    """The example configuration with its [gnupg] section replaced by `gnupg`."""
    text = (ROOT / "config.example.toml").read_text(encoding="utf-8")
    head, rest = text.split("[gnupg]\n", 1)
    tail = rest[rest.index("\n[") :]
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "relay.toml"
    path.write_text(f"{head}[gnupg]\n{gnupg}\n{tail}", encoding="utf-8")
    shutil.copytree(ROOT / "relay" / "policies", folder / "policies")
    return path


def set_backend(config: Path, backend: str) -> None:
    text = config.read_text(encoding="utf-8")
    start = text.index("backend = ")
    end = text.index("\n", start)
    config.write_text(f'{text[:start]}backend = "{backend}"{text[end:]}', encoding="utf-8")


def audit_actions(config: Path) -> list[str]:
    db = open_sealed(load(config))
    try:
        with db.transaction() as session:
            return [e.action for e in session.query(AuditEvent).order_by(AuditEvent.id)]
    finally:
        db.dispose()


def first_packet_tag(path: Path) -> Tag:
    return next(iter(PacketPile.from_bytes(path.read_bytes()))).tag


# Choosing the backend


def test_the_default_backend_is_gnupg_in_its_home(tmp_path: Path) -> None:
    settings = load(configure(tmp_path, 'home = "var/gnupg"'))
    assert settings.gnupg.backend == "gnupg"
    assert settings.gnupg.keyring_path == tmp_path / "var" / "gnupg"
    assert isinstance(open_keyring(settings.gnupg), GnuPG)


def test_sequoia_opens_its_keyring_folder_with_relative_paths_resolved(tmp_path: Path) -> None:
    settings = load(configure(tmp_path, 'backend = "sequoia"\nkeyring = "state/keys"'))
    assert settings.gnupg.keyring_path == tmp_path / "state" / "keys"
    crypto = open_keyring(settings.gnupg)
    assert isinstance(crypto, Sequoia)
    assert oct((tmp_path / "state" / "keys").stat().st_mode & 0o777) == "0o700"


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ('backend = "openpgpjs"', "backend"),
        (
            'backend = "sequoia"\npassphrase_file = "p"\npassphrase_env = "P"',
            "passphrase_file or passphrase_env, not both",
        ),
        ('backend = "sequoia"\npassphrase_env = "not a name"', "passphrase_env"),
    ],
)
def test_a_bad_gnupg_section_is_refused_at_load(tmp_path: Path, section: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load(configure(tmp_path, section))


def test_a_passphrase_file_others_can_read_is_refused(tmp_path: Path) -> None:
    secret = tmp_path / "passphrase"
    secret.write_text(PASSPHRASE + "\n", encoding="utf-8")
    secret.chmod(0o644)
    settings = load(configure(tmp_path, f'backend = "sequoia"\npassphrase_file = "{secret}"'))
    with pytest.raises(ConfigError, match=r"open to other users.*0644"):
        open_keyring(settings.gnupg)
    secret.chmod(0o600)
    assert isinstance(open_keyring(settings.gnupg), Sequoia)


def test_a_missing_passphrase_says_which(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RELAY_TEST_KEYRING_PASS", raising=False)
    settings = load(
        configure(tmp_path, 'backend = "sequoia"\npassphrase_env = "RELAY_TEST_KEYRING_PASS"')
    )
    with pytest.raises(ConfigError, match="RELAY_TEST_KEYRING_PASS is not set"):
        open_keyring(settings.gnupg)
    empty = tmp_path / "empty"
    empty.write_text("\n", encoding="utf-8")
    empty.chmod(0o600)
    settings = load(configure(tmp_path / "b", f'backend = "sequoia"\npassphrase_file = "{empty}"'))
    with pytest.raises(ConfigError, match="first line is empty"):
        open_keyring(settings.gnupg)


# relay init on the Sequoia backend


def test_init_on_sequoia_keeps_the_list_key_in_a_0600_file(tmp_path: Path) -> None:
    config = configure(tmp_path, 'backend = "sequoia"\nkeyring = "var/keyring"')
    first = relay(config, "init").stdout
    fingerprint = first.split("created: ")[1].split()[0]
    assert "already present" in relay(config, "init").stdout
    keyring = tmp_path / "var" / "keyring"
    secret = keyring / "secret" / f"{fingerprint}.pgp"
    assert oct(secret.stat().st_mode & 0o777) == "0o600"
    assert oct((keyring / "secret").stat().st_mode & 0o777) == "0o700"
    assert first_packet_tag(secret) == Tag.SecretKey  # no passphrase configured
    assert not (tmp_path / "var" / "gnupg").exists()  # no GnuPG home at all
    assert audit_actions(config) == ["list.initialised"]


def test_init_on_sequoia_with_a_passphrase_encrypts_the_key_file(tmp_path: Path) -> None:
    config = configure(tmp_path, 'backend = "sequoia"\npassphrase_env = "RELAY_TEST_KEYRING_PASS"')
    env = {"RELAY_TEST_KEYRING_PASS": PASSPHRASE}
    fingerprint = relay(config, "init", env=env).stdout.split("created: ")[1].split()[0]
    secret = tmp_path / "var" / "keyring" / "secret" / f"{fingerprint}.pgp"
    assert first_packet_tag(secret) == Tag.SKESK  # an OpenPGP message under the passphrase
    assert b"distributors-announce" not in secret.read_bytes()
    # Without the passphrase, or with another, the key does not open: the relay stops.
    with pytest.raises(CryptoError, match="needs its passphrase"):
        Sequoia(secret.parent.parent).list_keys()
    result = relay(config, "key", "list", code=1, env={"RELAY_TEST_KEYRING_PASS": "wrong" * 4})
    assert "wrong passphrase" in result.output
    result = relay(config, "key", "list", code=1, env={"RELAY_TEST_KEYRING_PASS": ""})
    assert "RELAY_TEST_KEYRING_PASS is not set or empty" in result.output
    assert fingerprint in relay(config, "key", "list", env=env).stdout


# relay keyring migrate


def _member(config: Path, keys: KeyFactory) -> str:
    key = keys.make("mover", "security@mover.example")
    relay(config, "member", "add", key.address, "--name", "Mover", "--key", str(key.public_file))
    return key.fingerprint


def test_migrate_to_sequoia_and_back_keeps_the_list_key_and_the_database(
    tmp_path: Path, keys: KeyFactory
) -> None:
    config = configure(tmp_path, 'backend = "gnupg"')
    fingerprint = relay(config, "init").stdout.split("created: ")[1].split()[0]
    member = _member(config, keys)
    out = relay(config, "keyring", "migrate", "--to", "sequoia").stdout
    assert f"list key {fingerprint}" in out and 'set [gnupg] backend = "sequoia"' in out
    assert "public keys copied: 2; data keys opened: 1" in out

    set_backend(config, "sequoia")
    settings = load(config)
    sequoia = open_keyring(settings.gnupg)
    assert isinstance(sequoia, Sequoia)
    assert key_owners.list_key(sequoia).fingerprint == fingerprint
    assert sequoia.key_info(member) is not None
    # The relay on the new keyring opens the sealed database and lists what it held.
    assert "security@mover.example" in relay(config, "member", "list").stdout
    # Copies it makes verify in a GnuPG keyring holding the list key's public part.
    signature, _ = sequoia.sign_detached(b"moved\r\n", fingerprint)
    gnupg = GnuPG(settings.gnupg.home)
    assert gnupg.verify_detached(b"moved\r\n", signature).fingerprint == fingerprint

    back = relay(config, "keyring", "migrate", "--to", "gnupg").stdout
    assert f"list key {fingerprint}" in back
    actions = audit_actions(config)
    assert actions.count("list.keyring_moved") == 2


def test_a_key_made_by_sequoia_moves_to_gnupg_and_signs_there(tmp_path: Path) -> None:
    config = configure(tmp_path, 'backend = "sequoia"')
    fingerprint = relay(config, "init").stdout.split("created: ")[1].split()[0]
    relay(config, "keyring", "migrate", "--to", "gnupg")
    set_backend(config, "gnupg")
    settings = load(config)
    gnupg = open_keyring(settings.gnupg)
    signature, micalg = gnupg.sign_detached(b"signed on gnupg\r\n", fingerprint)
    assert micalg.startswith("pgp-")
    verdict = Sequoia(settings.gnupg.keyring).verify_detached(b"signed on gnupg\r\n", signature)
    assert verdict.valid and verdict.fingerprint == fingerprint
    db = admin.open_database(settings)
    try:
        admin.unseal(db, gnupg)
    finally:
        db.dispose()


def test_migrate_refuses_a_keyring_holding_another_secret_key(tmp_path: Path) -> None:
    config = configure(tmp_path, 'backend = "gnupg"')
    relay(config, "init")
    settings = load(config)
    stranger = Sequoia(settings.gnupg.keyring).generate_key("Someone else", "x@example.net")
    result = relay(config, "keyring", "migrate", "--to", "sequoia", code=1)
    assert f"already holds another secret key ({stranger})" in result.output
    assert "list.keyring_moved" not in audit_actions(config)
    secrets = sorted(p.stem for p in (settings.gnupg.keyring / "secret").iterdir())
    assert secrets == [stranger]  # the list key did not land beside it


def test_migrate_refuses_a_key_that_does_not_open_the_database(tmp_path: Path) -> None:
    config = configure(tmp_path, 'backend = "gnupg"')
    relay(config, "init")
    settings = load(config)
    # Another relay's GnuPG home in this one's place: its key is not this database's.
    other = configure(tmp_path / "other", 'backend = "gnupg"')
    relay(other, "init")
    shutil.rmtree(settings.gnupg.home)
    shutil.copytree(
        tmp_path / "other" / "var" / "gnupg",
        settings.gnupg.home,
        ignore=shutil.ignore_patterns("S.*"),
    )
    result = relay(config, "keyring", "migrate", "--to", "sequoia", code=1)
    assert "does not open the database" in result.output


def test_migrate_without_a_list_key_says_so(tmp_path: Path) -> None:
    config = configure(tmp_path, 'backend = "sequoia"')
    relay(config, "init")
    os.environ.pop("RELAY_TEST_KEYRING_PASS", None)
    result = relay(config, "keyring", "migrate", "--to", "sequoia", code=1)
    assert "the gnupg keyring" in result.output and "the list has no key yet" in result.output


def test_a_sequoia_keyring_sees_what_another_process_wrote_at_once(
    tmp_path: Path, keys: KeyFactory
) -> None:
    relay_side = Sequoia(tmp_path / "keyring")
    cli_side = Sequoia(tmp_path / "keyring")  # as `relay key import` opens it, elsewhere
    assert relay_side.list_keys() == []
    first = keys.make("seen-first", "first@seen.example")
    second = keys.make("seen-second", "second@seen.example")
    cli_side.import_keys(first.public)
    assert relay_side.key_info(first.fingerprint) is not None
    # Two writes in quick succession, then a look: the second is seen too.
    cli_side.import_keys(second.public)
    cli_side.import_keys(first.public)
    assert {k.fingerprint for k in relay_side.list_keys()} == {
        first.fingerprint,
        second.fingerprint,
    }


def test_threads_sharing_a_sequoia_keyring_never_see_it_half_read(
    tmp_path: Path, keys: KeyFactory
) -> None:
    """The dispatcher's crypto workers and its event loop share one object; reloads (another
    process wrote) happen under them. Each sees a whole keyring or the one before it."""
    folder = tmp_path / "keyring"
    writer = Sequoia(folder)
    list_fpr = writer.generate_key("List", "list@example.org")
    members = [keys.make(f"thread{n}", f"security@thread{n}.example") for n in range(12)]
    for member in members:
        writer.import_keys(member.public)
    extra = [keys.make(f"late{n}", f"late{n}@example.net") for n in range(6)]
    shared = Sequoia(folder)  # fresh: its first use by all threads at once loads the folder
    failures: list[BaseException] = []

    def work(n: int) -> None:
        try:
            for member in members[n % 4 :: 4]:
                shared.sign_encrypt(b"copy\r\n", [member.fingerprint], list_fpr)
        except BaseException as exc:
            failures.append(exc)

    def write() -> None:
        for key in extra:  # each import makes every reader load the folder again
            writer.import_keys(key.public)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    threads.append(threading.Thread(target=write))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    assert {k.fingerprint for k in extra} <= {k.fingerprint for k in shared.list_keys()}

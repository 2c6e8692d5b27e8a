"""Configuration: the shipped example, path resolution, file choice and error messages."""

from __future__ import annotations

import shutil
from datetime import timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner

from relay.cli.root import cli
from relay.core.config import load
from relay.core.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "config.example.toml"


def test_example_config_loads_with_documented_values() -> None:
    settings = load(EXAMPLE)
    assert settings.list.address == "distributors-announce@example.org"
    assert settings.list.security_contact == "security@example.org"
    assert (settings.smtp.host, settings.smtp.port) == ("127.0.0.1", 8025)
    assert settings.smtp.max_message_size == 10 * 1024 * 1024
    assert settings.smtp.max_recipients == 10
    assert settings.delivery.smarthost is None
    assert settings.delivery.outbox == ROOT / "var" / "outbox"
    assert settings.delivery.workers == 2
    assert settings.delivery.min_backoff == timedelta(minutes=5)
    assert settings.delivery.max_backoff == timedelta(hours=4)
    assert settings.delivery.queue_lifetime == timedelta(days=5)
    assert settings.storage.database_url == f"sqlite:///{ROOT / 'var' / 'relay.db'}"
    assert settings.storage.spool_dir == ROOT / "var" / "spool"
    assert settings.gnupg.home == ROOT / "var" / "gnupg"


def test_every_commented_key_is_accepted(tmp_path: Path) -> None:
    """Uncommenting an optional key of the example must give a valid file."""
    text = EXAMPLE.read_text()
    for line in text.splitlines():
        if line.startswith("# ") and " = " in line and not line.startswith("# smarthost"):
            text = text.replace(line, line[2:])
    path = tmp_path / "all.toml"
    path.write_text(text)
    settings = load(path)
    assert settings.list.list_id == "distributors-announce.example.org"
    assert settings.smtp.hostname == "relay.example.org"


def test_relative_paths_resolve_against_the_files_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "etc"
    folder.mkdir()
    shutil.copy(EXAMPLE, folder / "relay.toml")
    monkeypatch.chdir(tmp_path)
    settings = load("etc/relay.toml")
    assert settings.storage.spool_dir == folder / "var" / "spool"
    assert settings.storage.database_url == f"sqlite:///{folder / 'var' / 'relay.db'}"
    assert settings.gnupg.home == folder / "var" / "gnupg"
    assert settings.delivery.outbox == folder / "var" / "outbox"
    assert settings.source == folder / "relay.toml"


def test_absolute_paths_are_kept(tmp_path: Path) -> None:
    path = tmp_path / "relay.toml"
    path.write_text(
        EXAMPLE.read_text().replace('spool_dir = "var/spool"', 'spool_dir = "/srv/spool"')
    )
    assert load(path).storage.spool_dir == Path("/srv/spool")


def _config_with(tmp_path: Path, name: str, port: int) -> Path:
    folder = tmp_path / name
    folder.mkdir()
    path = folder / "relay.toml"
    path.write_text(EXAMPLE.read_text().replace("port = 8025", f"port = {port}"))
    return path


def test_relay_config_env_and_config_option_pick_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    by_env = _config_with(tmp_path, "env", 2601)
    by_option = _config_with(tmp_path, "option", 2602)
    in_cwd = tmp_path / "cwd"
    in_cwd.mkdir()
    shutil.copy(EXAMPLE, in_cwd / "config.example.toml")
    monkeypatch.chdir(in_cwd)
    monkeypatch.delenv("RELAY_CONFIG", raising=False)
    assert load().source == in_cwd / "config.example.toml"
    monkeypatch.setenv("RELAY_CONFIG", str(by_env))
    assert load().smtp.port == 2601
    assert load(by_option).smtp.port == 2602

    # The same through the command: init creates its files beside the chosen file.
    assert CliRunner().invoke(cli, ["init"]).exit_code == 0
    assert (by_env.parent / "var" / "relay.db").is_file()
    assert CliRunner().invoke(cli, ["--config", str(by_option), "init"]).exit_code == 0
    assert (by_option.parent / "var" / "relay.db").is_file()
    assert not (in_cwd / "var").exists()


BAD = [
    ("unknown key", "[smtp]\n", "[smtp]\nbogus = 1\n", "smtp.bogus: unknown key"),
    (
        "bad address",
        'address = "distributors-announce@example.org"',
        'address = "not an address"',
        "list.address: not an email address",
    ),
    (
        "bad smarthost",
        'outbox = "var/outbox"',
        'smarthost = "mail.example.org"',
        "delivery.smarthost: expected 'host:port'",
    ),
    (
        "both targets",
        '# smarthost = "127.0.0.1:25"',
        'smarthost = "127.0.0.1:25"',
        "set exactly one of 'smarthost' or 'outbox'",
    ),
    (
        "no target",
        'outbox = "var/outbox"',
        "",
        "set exactly one of 'smarthost' or 'outbox'",
    ),
    (
        "bad duration",
        'min_backoff = "5m"',
        'min_backoff = "five minutes"',
        "delivery.min_backoff: expected a duration",
    ),
    ("not toml", "[smtp]\n", "[smtp\n", "not valid TOML"),
    (
        "console off loopback without HTTPS",
        'host = "127.0.0.1"\nport = 8480',
        'host = "192.0.2.10"\nport = 8480',
        "[web] host '192.0.2.10' is not loopback: set tls_cert and tls_key (HTTPS)",
    ),
    (
        "console certificate without its key",
        '# tls_cert = "/etc/embargo-relay/web.crt"',
        'tls_cert = "/etc/embargo-relay/web.crt"',
        "[web] tls_cert and tls_key go together",
    ),
]


@pytest.mark.parametrize(("old", "new", "expected"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_config_names_the_key_without_traceback(
    tmp_path: Path, old: str, new: str, expected: str
) -> None:
    text = EXAMPLE.read_text()
    assert old in text
    path = tmp_path / "bad.toml"
    path.write_text(text.replace(old, new, 1))
    with pytest.raises(ConfigError) as caught:
        load(path)
    assert expected in str(caught.value)

    result = CliRunner().invoke(cli, ["--config", str(path), "member", "list"])
    assert result.exit_code == 1
    assert result.stderr.startswith(f"error: {path}")
    assert expected in result.stderr
    assert "Traceback" not in result.output


def test_missing_config_file(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["--config", str(tmp_path / "none.toml"), "key", "list"])
    assert result.exit_code == 1
    assert result.stderr == f"error: config file not found: {tmp_path / 'none.toml'}\n"

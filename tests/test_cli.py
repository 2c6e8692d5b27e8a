"""The `relay` command end to end: real config file, real SQLite, real gpg, real exit codes."""

from __future__ import annotations

import json
import os
import shutil
import signal
import smtplib
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from sqlalchemy import select

from relay.cli.root import cli
from relay.core.config import load
from relay.model import AuditEvent, Delivery, DeliveryStatus, Member, Message
from tests.support.keys import KeyFactory
from tests.support.relayhome import open_sealed

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def config(tmp_path: Path) -> Path:
    """The example configuration, copied so that its var/ lands in tmp_path."""
    path = tmp_path / "relay.toml"
    shutil.copy(ROOT / "config.example.toml", path)
    shutil.copytree(ROOT / "relay" / "policies", tmp_path / "policies")
    return path


@pytest.fixture
def initialised(config: Path) -> Path:
    relay(config, "init")
    return config


def relay(config: Path, *args: str, code: int = 0) -> Result:
    result = CliRunner().invoke(cli, ["--config", str(config), *args])
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    return result


def audit_rows(config: Path, action: str | None = None) -> list[AuditEvent]:
    db = open_sealed(load(config))
    try:
        with db.transaction() as session:
            query = select(AuditEvent).order_by(AuditEvent.id)
            if action:
                query = query.where(AuditEvent.action == action)
            return list(session.execute(query).scalars())
    finally:
        db.dispose()


def keyring_fingerprints(config: Path) -> set[str]:
    return {k["fingerprint"] for k in json.loads(relay(config, "key", "list", "--json").stdout)}


# init and serve


def test_init_twice_is_idempotent_and_audited_once(config: Path) -> None:
    first = relay(config, "init").stdout
    second = relay(config, "init").stdout
    fingerprint = first.split("created: ")[1].split()[0]
    assert len(fingerprint) == 40
    assert f"already present: {fingerprint}" in second
    var = config.parent / "var"
    # Posts live in the database, sealed: no spool folder.
    assert (var / "relay.db").is_file() and (var / "outbox").is_dir()
    assert not (var / "spool").exists()
    assert oct((var / "gnupg").stat().st_mode & 0o777) == "0o700"
    rows = audit_rows(config, "list.initialised")
    assert [r.detail["fingerprint"] for r in rows] == [fingerprint]
    keys = json.loads(relay(config, "key", "list", "--json").stdout)
    assert [(k["fingerprint"], k["owners"], k["status"]) for k in keys] == [
        (fingerprint, ["list"], "usable")
    ]


def test_commands_before_init_say_what_to_do(config: Path) -> None:
    result = relay(config, "member", "list", code=1)
    assert "run 'relay init'" in result.stderr


def test_as_a_real_process_with_relay_config_env(config: Path) -> None:
    env = {**os.environ, "RELAY_CONFIG": str(config)}
    run = [sys.executable, "-m", "relay", "init"]
    done = subprocess.run(run, env=env, cwd=config.parent, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "list key created: " in done.stdout
    assert (config.parent / "var" / "relay.db").is_file()

    config.write_text(config.read_text().replace("port = 8025", 'port = "eighty"'))
    done = subprocess.run(run, env=env, cwd=config.parent, capture_output=True, text=True)
    assert done.returncode == 1
    assert "smtp.port" in done.stderr and done.stderr.startswith("error: ")
    assert "Traceback" not in done.stderr + done.stdout


def test_serve_initialises_on_first_start_and_stops_on_sigterm(config: Path) -> None:
    config.write_text(config.read_text().replace("port = 8025", "port = 0"))  # any free port
    command = [sys.executable, "-m", "relay", "--config", str(config), "serve"]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        banner = proc.stdout.readline()  # printed once the socket is listening
        assert "listening on 127.0.0.1:" in banner, proc.stderr.read() if proc.stderr else ""
        port = int(banner.split("127.0.0.1:")[1].split()[0])
        with smtplib.SMTP("127.0.0.1", port) as smtp:
            assert smtp.ehlo()[0] == 250
            assert smtp.noop()[0] == 250
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    assert "list key" in err
    assert (config.parent / "var" / "relay.db").is_file()
    assert [r.action for r in audit_rows(config)] == ["list.initialised"]


def test_internal_error_is_one_line_and_exit_70_with_traceback_in_log(initialised: Path) -> None:
    database = initialised.parent / "var" / "relay.db"
    for leftover in database.parent.glob("relay.db-*"):  # WAL files
        leftover.unlink()
    database.write_bytes(b"this is not a database file" * 100)
    result = relay(initialised, "member", "list", code=70)
    assert result.stderr.strip().splitlines() == [
        "error: internal error (DatabaseError); see the log"
    ]
    log = (initialised.parent / "var" / "relay.log").read_text()
    assert "Traceback" in log and "DatabaseError" in log


def test_every_command_has_help_without_a_config(tmp_path: Path) -> None:
    missing = str(tmp_path / "missing.toml")
    commands = [
        [],
        ["init"],
        ["serve"],
        ["member", "add"],
        ["member", "list"],
        ["member", "remove"],
        ["sender", "add"],
        ["sender", "list"],
        ["sender", "remove"],
        ["key", "list"],
        ["queue"],
        ["queue", "retry"],
    ]
    for command in commands:
        result = CliRunner().invoke(cli, ["--config", missing, *command, "--help"])
        assert result.exit_code == 0, (command, result.output)
        assert "Usage: " in result.stdout


def test_usage_error_exits_2(initialised: Path) -> None:
    result = relay(initialised, "member", "add", "x@example.net", code=2)
    assert "--name" in result.stderr or "--key" in result.stderr


# members


def test_member_add_list_and_audit(initialised: Path, keys: KeyFactory) -> None:
    alice = keys.make("alice", "Security@Distro-A.example")
    out = relay(
        initialised,
        "member",
        "add",
        "Security@Distro-A.example",
        "--name",
        "Distro A",
        "--key",
        str(alice.public_file),
    ).stdout
    assert alice.fingerprint in out
    [member] = json.loads(relay(initialised, "member", "list", "--json").stdout)
    assert member["address"] == "security@distro-a.example"
    assert member["name"] == "Distro A"
    assert (member["state"], member["key_count"], member["usable"]) == ("active", 1, True)
    assert member["fingerprints"] == [alice.fingerprint]
    assert member["created_at"].endswith("+00:00")
    table = relay(initialised, "member", "list").stdout
    assert "security@distro-a.example" in table and "yes" in table

    [added] = audit_rows(initialised, "member.added")
    assert added.subject == "security@distro-a.example"
    assert added.actor.startswith("cli:")
    assert added.detail["fingerprints"] == [alice.fingerprint]
    [imported] = audit_rows(initialised, "key.imported")
    assert imported.subject == alice.fingerprint

    owners = {
        k["fingerprint"]: k["owners"]
        for k in json.loads(relay(initialised, "key", "list", "--json").stdout)
    }
    assert owners[alice.fingerprint] == ["member security@distro-a.example"]


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda keys: keys.expired("expired-member"), "key has expired"),
        (lambda keys: keys.revoked("revoked-member"), "key is revoked"),
        (lambda keys: keys.make("weak-member", kind="rsa1024"), "1024 bits is too weak"),
        (lambda keys: keys.make("signonly-member", kind="sign-only"), "no usable encryption"),
    ],
    ids=["expired", "revoked", "rsa1024", "sign-only"],
)
def test_member_add_refuses_a_bad_key_and_changes_nothing(
    initialised: Path, keys: KeyFactory, make, expected: str
) -> None:
    bad = make(keys)
    before = keyring_fingerprints(initialised)
    rows_before = len(audit_rows(initialised))
    result = relay(
        initialised,
        "member",
        "add",
        "m@distro.example",
        "--name",
        "M",
        "--key",
        str(bad.public_file),
        code=1,
    )
    assert result.stderr.startswith("error: ")
    assert expected in result.stderr and bad.fingerprint in result.stderr
    assert json.loads(relay(initialised, "member", "list", "--all", "--json").stdout) == []
    assert keyring_fingerprints(initialised) == before
    assert len(audit_rows(initialised)) == rows_before


def test_member_add_refuses_a_secret_key_file(initialised: Path, keys: KeyFactory) -> None:
    key = keys.make("leaky")
    result = relay(
        initialised,
        "member",
        "add",
        "m@distro.example",
        "--name",
        "M",
        "--key",
        str(key.secret_file),
        code=1,
    )
    assert "secret key" in result.stderr
    assert key.fingerprint not in keyring_fingerprints(initialised)


def test_member_add_with_missing_key_file_is_a_usage_error(initialised: Path, tmp_path) -> None:
    result = relay(
        initialised,
        "member",
        "add",
        "m@distro.example",
        "--name",
        "M",
        "--key",
        str(tmp_path / "nope.asc"),
        code=2,
    )
    assert "nope.asc" in result.stderr and "does not exist" in result.stderr


def test_member_add_refuses_a_file_without_keys(initialised: Path, tmp_path: Path) -> None:
    junk = tmp_path / "junk.asc"
    junk.write_text("hello, not a key\n")
    result = relay(
        initialised,
        "member",
        "add",
        "m@distro.example",
        "--name",
        "M",
        "--key",
        str(junk),
        code=1,
    )
    assert "no OpenPGP public key" in result.stderr


def test_member_add_refuses_a_bad_address(initialised: Path, keys: KeyFactory) -> None:
    key = keys.make("alice")
    result = relay(
        initialised,
        "member",
        "add",
        "not-an-address",
        "--name",
        "M",
        "--key",
        str(key.public_file),
        code=1,
    )
    assert "not an email address" in result.stderr


def test_member_remove_keeps_the_row_and_cancels_deliveries(
    initialised: Path, keys: KeyFactory
) -> None:
    key = keys.make("bob")
    relay(
        initialised,
        "member",
        "add",
        "bob@distro-b.example",
        "--name",
        "B",
        "--key",
        str(key.public_file),
    )
    db = open_sealed(load(initialised))
    with db.transaction() as session:
        member = session.execute(select(Member)).scalar_one()
        session.add(Message(id="m1", sha256="0" * 64, subject="[EMBARGOED] test"))
        session.add(
            Delivery(
                message_id="m1",
                member_id=member.id,
                recipient=member.address,
                copy_message_id="<c1@example.org>",
            )
        )
    queued = json.loads(relay(initialised, "queue", "--json").stdout)
    assert [(d["recipient"], d["status"]) for d in queued] == [("bob@distro-b.example", "queued")]

    out = relay(initialised, "member", "remove", "BOB@distro-b.example").stdout
    assert "1 unsent deliveries cancelled" in out
    with db.transaction() as session:
        delivery = session.execute(select(Delivery)).scalar_one()
        assert delivery.status == DeliveryStatus.FAILED
    db.dispose()
    assert json.loads(relay(initialised, "member", "list", "--json").stdout) == []
    [gone] = json.loads(relay(initialised, "member", "list", "--all", "--json").stdout)
    assert gone["state"] == "removed"
    [removed] = audit_rows(initialised, "member.removed")
    assert removed.subject == "bob@distro-b.example" and removed.detail["cancelled"] == 1
    assert len(audit_rows(initialised, "delivery.cancelled")) == 1


def test_member_remove_unknown_exits_1(initialised: Path) -> None:
    result = relay(initialised, "member", "remove", "nobody@example.net", code=1)
    assert result.stderr == "error: no member 'nobody@example.net'\n"


# senders


def test_sender_add_list_remove(initialised: Path, keys: KeyFactory) -> None:
    src = keys.make("src-lead", "lead@src.example")
    relay(initialised, "sender", "add", "Lead@SRC.example", "--key", str(src.public_file))
    [sender] = json.loads(relay(initialised, "sender", "list", "--json").stdout)
    assert sender["address"] == "lead@src.example"
    assert sender["fingerprints"] == [src.fingerprint] and sender["usable"] is True
    assert "lead@src.example" in relay(initialised, "sender", "list").stdout

    again = relay(
        initialised, "sender", "add", "lead@src.example", "--key", str(src.public_file), code=1
    )
    assert "already an authorised sender" in again.stderr

    relay(initialised, "sender", "remove", "lead@src.example")
    assert json.loads(relay(initialised, "sender", "list", "--json").stdout) == []
    assert relay(initialised, "sender", "remove", "lead@src.example", code=1).stderr == (
        "error: no sender 'lead@src.example'\n"
    )
    assert [r.action for r in audit_rows(initialised) if r.subject == "lead@src.example"] == [
        "sender.added",
        "sender.removed",
    ]
    assert [r.subject for r in audit_rows(initialised, "key.imported")] == [src.fingerprint]


# keys


def test_key_list_shows_owners_and_status(initialised: Path, keys: KeyFactory) -> None:
    alice = keys.make("alice")
    src = keys.make("src-signer", kind="sign-only")
    relay(
        initialised,
        "member",
        "add",
        "alice@example.net",
        "--name",
        "A",
        "--key",
        str(alice.public_file),
    )
    relay(initialised, "sender", "add", "src@example.net", "--key", str(src.public_file))
    listed = {
        k["fingerprint"]: k for k in json.loads(relay(initialised, "key", "list", "--json").stdout)
    }
    assert listed[alice.fingerprint]["owners"] == ["member alice@example.net"]
    assert listed[alice.fingerprint]["status"] == "usable"
    assert listed[src.fingerprint]["owners"] == ["sender src@example.net"]
    assert listed[src.fingerprint]["status"] == "sign-only"
    assert listed[alice.fingerprint]["algorithm"] == "EdDSA"
    assert listed[alice.fingerprint]["created_at"].endswith("+00:00")
    table = relay(initialised, "key", "list").stdout
    assert alice.fingerprint in table and "UTC" in table


# queue


def _delivery(config: Path, status: DeliveryStatus) -> int:
    db = open_sealed(load(config))
    try:
        with db.transaction() as session:
            if session.get(Message, "m9") is None:
                session.add(Message(id="m9", sha256="0" * 64))
            delivery = Delivery(
                message_id="m9",
                recipient=f"{status}@example.net",
                status=status,
                copy_message_id=f"<{status}@example.org>",
                last_code="held" if status == DeliveryStatus.HELD else None,
                last_reason="no usable key" if status == DeliveryStatus.HELD else None,
            )
            session.add(delivery)
            session.flush()
            return delivery.id
    finally:
        db.dispose()


def test_queue_lists_unsent_and_retry_requeues(initialised: Path) -> None:
    held = _delivery(initialised, DeliveryStatus.HELD)
    sent = _delivery(initialised, DeliveryStatus.SENT)
    shown = json.loads(relay(initialised, "queue", "--json").stdout)
    assert [(d["id"], d["status"], d["last_reason"]) for d in shown] == [
        (held, "held", "no usable key")
    ]
    everything = json.loads(relay(initialised, "queue", "--all", "--json").stdout)
    assert {d["id"] for d in everything} == {held, sent}
    assert "no usable key" in relay(initialised, "queue").stdout

    relay(initialised, "queue", "retry", str(held))
    [requeued] = json.loads(relay(initialised, "queue", "--json").stdout)
    assert requeued["status"] == "queued" and requeued["next_attempt_at"].endswith("+00:00")
    assert [r.subject for r in audit_rows(initialised, "delivery.retried")] == [str(held)]

    assert "already sent" in relay(initialised, "queue", "retry", str(sent), code=1).stderr
    assert "no delivery" in relay(initialised, "queue", "retry", "999", code=1).stderr

"""`relay member suspend|resume|show|update|sync`, `relay key import|check` and
`relay advisory status|report` end to end: real config, SQLite, gpg keys, groups file."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from relay.cli.root import cli
from relay.model import AuditEvent, Delivery, Member
from tests.support.cli import CliRelay, set_up
from tests.support.keys import KeyFactory

GROUPS = Path(__file__).resolve().parent / "data" / "groups" / "k8s-groups.yaml"
A, B = "secalert@redhat.com", "security@cli-old.example"


@pytest.fixture
def relay(tmp_path: Path, keys: KeyFactory) -> Iterator[CliRelay]:
    home = set_up(tmp_path, keys, [(f"cli-{a.split('@')[1].split('.')[0]}", a, a) for a in (A, B)])
    yield home
    home.db.dispose()


def test_new_commands_have_help() -> None:
    for command in [
        ["member", "suspend"],
        ["member", "resume"],
        ["member", "show"],
        ["member", "update"],
        ["member", "sync"],
        ["key", "import"],
        ["key", "check"],
        ["advisory", "status"],
        ["advisory", "report"],
    ]:
        result = CliRunner().invoke(cli, [*command, "--help"])
        assert result.exit_code == 0 and "Usage: " in result.stdout, command


def test_suspend_resume_and_show(relay: CliRelay) -> None:
    relay("advisory", "create", "CVE-2026-21", "--title", "T")
    relay("advisory", "schedule", "CVE-2026-21", "--lift", "2099-03-03 16:00Z")
    out = relay("member", "suspend", B, "--reason", "stopped answering").stdout
    assert f"member suspended: {B}; 1 unsent deliveries cancelled" in out
    assert "--reason" in relay("member", "suspend", B, code=2).stderr
    assert "already suspended" in relay("member", "suspend", B, "--reason", "x", code=1).stderr
    relay("member", "resume", B, "--reason", "back")
    relay("member", "update", B, "--name", "Old Distro", "--domain", "cli-old.example")

    shown = relay.json("member", "show", B)
    assert (shown["state"], shown["name"], shown["domains"]) == (
        "active",
        "Old Distro",
        ["cli-old.example"],
    )
    assert [h["action"] for h in shown["history"]] == [
        "member.added",
        "key.imported",
        "delivery.cancelled",
        "member.suspended",
        "member.resumed",
        "member.updated",
    ]
    assert shown["history"][3]["reason"] == "stopped answering"
    [key] = shown["keys"]
    assert (key["status"], key["expires_at"]) == ("usable", None)
    text = relay("member", "show", B).stdout
    assert "reachable:  yes" in text and "stopped answering" in text and "never" in text
    assert "no member" in relay("member", "show", "x@nowhere.example", code=1).stderr


def test_sync_dry_run_apply_and_bad_files(relay: CliRelay, tmp_path: Path) -> None:
    plan = relay.json("member", "sync", str(GROUPS), "--group", "distributors-announce")
    assert (len(plan["added"]), plan["removed"], plan["unchanged"]) == (28, [B], [A])
    assert (plan["applied"], plan["changes"]) == (False, 29)
    text = relay("member", "sync", str(GROUPS), "--group", "distributors-announce").stdout
    assert "dry run, nothing changed" in text and f"removed: {B}" in text
    assert "28 added, 0 restored, 1 removed, 1 unchanged" in text
    assert relay.count(Member) == 2

    bad = tmp_path / "bad.yaml"
    bad.write_text("groups:\n  - name: distributors-announce\n    members: [x@y.example\n")
    before = relay.count(AuditEvent)
    for args, message in [
        ([str(bad), "--group", "distributors-announce"], "not valid YAML at line"),
        ([str(GROUPS), "--group", "no-such-group"], "no group 'no-such-group'"),
        ([str(tmp_path / "missing.yaml"), "--group", "x"], "cannot read"),
    ]:
        result = relay("member", "sync", *args, "--apply", code=1)
        assert result.stderr.startswith("error: ") and message in result.stderr
    assert (relay.count(Member), relay.count(AuditEvent)) == (2, before)

    out = relay("member", "sync", str(GROUPS), "--group", "distributors-announce", "--apply")
    assert "applied" in out.stdout and "28 member(s) have no usable key" in out.stdout
    members = relay.json("member", "list")
    assert len(members) == 29
    assert {m["address"] for m in members if not m["usable"]} == set(plan["added"])
    again = relay.json("member", "sync", str(GROUPS), "--group", "distributors-announce")
    assert again["changes"] == 0


def test_key_import_and_check(relay: CliRelay, keys: KeyFactory) -> None:
    relay("member", "sync", str(GROUPS), "--group", "distributors-announce", "--apply")
    ubuntu = keys.make("cli-ubuntu", "security@ubuntu.com", expire="10d")
    weak = keys.make("cli-weak", "security@ubuntu.com", kind="rsa1024")
    result = relay(
        "key", "import", str(weak.public_file), "--member", "security@ubuntu.com", code=1
    )
    assert "1024 bits is too weak" in result.stderr
    out = relay("key", "import", str(ubuntu.public_file), "--member", "security@ubuntu.com").stdout
    assert f"key(s) added to security@ubuntu.com: {ubuntu.fingerprint}" in out

    report = relay.json("key", "check")
    by_member = {k["member"]: k for k in report["keys"]}
    assert by_member["security@ubuntu.com"]["status"] == "expiring"
    assert by_member[A]["status"] == "usable"
    assert report["reminded"] == [ubuntu.fingerprint]
    assert len(report["unreachable"]) == 27  # from the file, still without a key
    assert relay.json("key", "check")["reminded"] == []  # once per key and expiry date
    text = relay("key", "check").stdout
    assert "expiring" in text
    assert "unreachable (copies held): k8s-security@suse.de: no key on file" in text


def test_advisory_status_report_and_show(relay: CliRelay) -> None:
    relay("advisory", "create", "CVE-2026-22", "--title", "Escape")
    out = relay("advisory", "status", "CVE-2026-22", A, "tested-no-issues").stdout
    assert f"CVE-2026-22: {A} none -> tested-no-issues" in out
    result = relay("advisory", "status", "CVE-2026-22", A, "issue-found", code=1)
    assert "needs a text" in result.stderr
    assert relay("advisory", "status", "CVE-2026-22", A, "fixed", code=2).exit_code == 2

    report = relay.json("advisory", "report", "CVE-2026-22")
    assert [(r["member"], r["status"]) for r in report["rows"]] == [
        (A, "tested-no-issues"),
        (B, "none"),
    ]
    assert report["counts"]["tested-no-issues"] == 1
    text = relay("advisory", "report", "CVE-2026-22").stdout
    assert "members: 2; none 1" in text and "tested-no-issues 1" in text

    shown = relay.json("advisory", "show", "CVE-2026-22")
    assert [(r["member"], r["status"]) for r in shown["statuses"]] == [
        (A, "tested-no-issues"),
        (B, "none"),
    ]
    table = relay("advisory", "show", "CVE-2026-22").stdout
    assert "Contributing back" in table and "tested-no-issues" in table
    assert relay.count(Delivery) == 0  # statuses send nothing

"""Every command that takes an advisory ID, a member or sender address, or the number of an
incident, delivery, grant or application refuses one that names nothing, with the words
and exit code of `relay audit --advisory`: "error: no advisory 'NOPE-1'", exit 1. A
listing filtered by a typo no longer answers "none" as if all were well."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from relay.model import AuditEvent
from tests.support.cli import CliRelay, set_up
from tests.support.keys import KeyFactory

MEMBER = "unk-a@distro-a.example"
ADVISORY = "CVE-2026-7200"
NOBODY = "nobody@nowhere.example"
NOPE = "NOPE-1"
APPLICATION = Path(__file__).resolve().parent / "data" / "applications" / "complete.md"


@pytest.fixture
def relay(tmp_path: Path, keys: KeyFactory) -> Iterator[CliRelay]:
    home = set_up(tmp_path, keys, [("unk-a", MEMBER, "Distro A")])
    home("advisory", "create", ADVISORY, "--title", "Kubelet escape")
    yield home
    home.db.dispose()


@pytest.fixture
def key_file(keys: KeyFactory) -> str:
    return str(keys.make("unk-dev", "dev@distro-a.example").public_file)


def _unknown_advisory(key_file: str) -> list[list[str]]:
    return [
        ["audit", "--advisory", NOPE],
        ["incidents", "--advisory", NOPE],
        ["incident", "report", NOPE, "--member", MEMBER, "--to", "x@y.example", "--note", "n"],
        ["share", "list", "--advisory", NOPE],
        ["share", NOPE, "dev@distro-a.example", "--key", key_file, "--for", MEMBER],
        ["share", "add", NOPE, "dev@distro-a.example", "--key", key_file, "--for", MEMBER],
        ["advisory", "show", NOPE],
        ["advisory", "schedule", NOPE, "--lift", "+30d"],
        ["advisory", "lift", NOPE],
        ["advisory", "confirm", NOPE],
        ["advisory", "cancel", NOPE],
        ["advisory", "public-text", NOPE, key_file],
        ["advisory", "status", NOPE, MEMBER, "acknowledged"],
        ["advisory", "report", NOPE],
    ]


def _unknown_member(key_file: str) -> list[list[str]]:
    return [
        ["incidents", "--member", NOBODY],
        ["incident", "report", ADVISORY, "--member", NOBODY, "--to", "x@y.example", "--note", "n"],
        ["share", ADVISORY, "dev@distro-a.example", "--key", key_file, "--for", NOBODY],
        ["advisory", "status", ADVISORY, NOBODY, "acknowledged"],
        ["member", "show", NOBODY],
        ["member", "suspend", NOBODY, "--reason", "r"],
        ["member", "resume", NOBODY, "--reason", "r"],
        ["member", "remove", NOBODY],
        ["member", "update", NOBODY, "--name", "n"],
        ["member", "update", MEMBER, "--vouched-by", NOBODY],
        ["key", "import", key_file, "--member", NOBODY],
        ["application", "vouch", "1", "--by", NOBODY],
    ]


NUMBERED = [
    (["incidents", "resolve", "999", "--note", "n"], "no incident 999"),
    (["share", "revoke", "999"], "no grant 999"),
    (["queue", "retry", "999"], "no delivery 999"),
    # Beyond a PostgreSQL integer: still "no such", not a database error.
    (["queue", "retry", "81362389620217488"], "no delivery 81362389620217488"),
    (["incidents", "resolve", "4294967296", "--note", "n"], "no incident 4294967296"),
    (["held", "release", "0123456789abcdef"], "no post '0123456789abcdef'"),
    (["held", "reject", "0123456789abcdef", "--reason", "r"], "no post '0123456789abcdef'"),
    (["application", "show", "999"], "no application 999"),
    (["application", "vouch", "999", "--by", MEMBER], "no application 999"),
    (["application", "approve", "999"], "no application 999"),
    (["application", "reject", "999", "--reason", "r"], "no application 999"),
    (["sender", "remove", NOBODY], f"no sender '{NOBODY}'"),
]


def _refused(relay: CliRelay, args: list[str], message: str) -> None:
    before = relay.count(AuditEvent)
    result = relay(*args, code=1)
    assert result.stderr == f"error: {message}\n", args
    assert result.stdout == "", args  # no "none", no partial output
    assert relay.count(AuditEvent) == before, args


def test_an_unknown_advisory_is_refused_by_every_command_that_takes_one(
    relay: CliRelay, key_file: str
) -> None:
    for args in _unknown_advisory(key_file):
        _refused(relay, args, f"no advisory '{NOPE}'")


def test_an_unknown_member_is_refused_by_every_command_that_takes_one(
    relay: CliRelay, key_file: str
) -> None:
    relay("application", "submit", str(APPLICATION))  # application 1, for the vouch
    for args in _unknown_member(key_file):
        _refused(relay, args, f"no member '{NOBODY}'")


@pytest.mark.parametrize(("args", "message"), NUMBERED)
def test_an_unknown_number_or_post_is_refused(
    relay: CliRelay, args: list[str], message: str
) -> None:
    _refused(relay, args, message)


def test_known_names_still_list_and_compare_as_before(relay: CliRelay) -> None:
    """The check is on the name only: any spelling the relay reads, any state."""
    assert relay("incidents", "--advisory", ADVISORY.lower()).stdout == "Incidents: none\n"
    assert relay("share", "list", "--advisory", ADVISORY).stdout == "Need-to-know grants: none\n"
    assert relay("incidents", "--member", MEMBER.upper()).stdout == "Incidents: none\n"
    relay("member", "remove", MEMBER, "--reason", "left")
    assert "removed" in relay("member", "show", MEMBER).stdout  # a removed member is known


def test_a_malformed_address_is_refused_as_one(relay: CliRelay) -> None:
    result = relay("member", "show", "not-an-address", code=1)
    assert result.stderr == "error: not an email address: 'not-an-address'\n"

"""`relay member add` without `--key`: a member the relay cannot reach yet, as a groups-file
sync or an approval adds one. Its copies are held (never sent in plaintext), the security
contact is told, and `relay key import` sends them on. Real gpg, SMTP over loopback."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

from click.testing import CliRunner, Result
from sqlalchemy import select

from relay.cli.root import cli
from relay.model import Delivery, DeliveryStatus, HoldReason, Member, Message
from tests.support.keys import KeyFactory
from tests.support.mail import OpenedCopy, pgp_mime_signed, text_entity
from tests.support.relayhome import CONTACT, LIST, RelayHome, RelayThread, distributors, smtp_post
from tests.support.smtpsink import SmtpSink

LATE = "security@late.example"


def _relay(home: RelayHome) -> Callable[..., Result]:
    def run(*args: str, code: int = 0) -> Result:
        result = CliRunner().invoke(cli, ["--config", str(home.config_path), *args])
        assert result.exit_code == code, (result.stdout, result.stderr)
        assert "Traceback" not in result.output
        return result

    return run


def _until(check: Callable[[], object], what: str, timeout: float = 60) -> object:
    """Wait for the running relay to do `what`: the dispatcher works in its own thread."""
    deadline = time.monotonic() + timeout
    while not (found := check()):
        assert time.monotonic() < deadline, f"the relay did not {what}"
        time.sleep(0.1)
    return found


def _late_copy(home: RelayHome) -> Delivery | None:
    with home.db.transaction() as s:
        return s.execute(
            select(Delivery).join(Message).where(Delivery.recipient == LATE, Message.kind == "post")
        ).scalar_one_or_none()


def _told_contact(home: RelayHome, words: str) -> list[str]:
    with home.db.transaction() as s:
        subjects = s.execute(
            select(Message.subject).join(Delivery).where(Delivery.recipient == CONTACT)
        ).scalars()
        return [subject for subject in subjects if subject and words in subject]


def test_a_member_added_without_a_key_is_held_the_contact_told_and_its_key_releases_it(
    tmp_path: Path, keys: KeyFactory, sink: SmtpSink
) -> None:
    home = distributors(tmp_path, keys, sink.port, members=1)
    relay = _relay(home)

    added = relay("member", "add", LATE, "--name", "Late Distro").stdout
    assert added.splitlines() == [
        f"member added: {LATE} with no key",
        "note: no key: copies to this member are held until a key is added "
        f"('relay key import FILE --member {LATE}'); the security contact was told",
    ]
    [late] = [
        m for m in json.loads(relay("member", "list", "--json").stdout) if m["address"] == LATE
    ]
    assert (late["key_count"], late["usable"], late["problem"]) == (0, False, "no key on file")
    [row] = [line for line in relay("member", "list").stdout.splitlines() if LATE in line]
    assert "no: no key on file" in row
    assert _told_contact(home, "without a usable key")

    src = keys.make("src", "src@example.org")
    post = pgp_mime_signed(
        home.client(src),
        src.fingerprint,
        text_entity("X-Advisory: CVE-2026-7300\nX-Embargo-Until: +10d\n\nThe flaw.\n"),
        subject="(outer)",
        sender=src.address,
        to=LIST,
    )
    with RelayThread(home.settings) as running:
        assert running.run(smtp_post(running.port, post))[0] == 250
        held = _until(
            lambda: (d := _late_copy(home)) is not None and d.status == DeliveryStatus.HELD and d,
            "hold the keyless member's copy",
        )
        assert isinstance(held, Delivery) and held.hold_reason == HoldReason.NO_KEY
        _until(lambda: _told_contact(home, "Member unreachable"), "tell the security contact")
        assert not [m for m in sink.messages if LATE in m.rcpt_tos]  # nothing in plaintext

        member_key = keys.make("late", LATE)
        imported = relay("key", "import", str(member_key.public_file), "--member", LATE).stdout
        assert "1 held delivery(ies) queued again" in imported
        _until(lambda: [m for m in sink.messages if m.rcpt_tos == (LATE,)], "send the copy")
    [copy] = [m for m in sink.messages if m.rcpt_tos == (LATE,)]
    assert "The flaw." in OpenedCopy(home.client(member_key), copy.data).text
    delivered = _late_copy(home)
    assert delivered is not None and delivered.status == DeliveryStatus.SENT
    with home.db.transaction() as s:
        member = s.execute(select(Member).where(Member.address == LATE)).scalar_one()
        assert [k.fingerprint for k in member.keys] == [member_key.fingerprint]


def test_member_add_still_refuses_a_key_it_cannot_use_and_then_changes_nothing(
    tmp_path: Path, keys: KeyFactory, sink: SmtpSink
) -> None:
    home = distributors(tmp_path, keys, sink.port, members=1)
    relay = _relay(home)
    expired = keys.expired("late-old", LATE)
    refused = relay(
        "member", "add", LATE, "--name", "Late", "--key", str(expired.public_file), code=1
    )
    assert refused.stderr.startswith("error: ") and "expired" in refused.stderr
    with home.db.transaction() as s:
        assert s.execute(select(Member).where(Member.address == LATE)).first() is None
    assert not _told_contact(home, "without a usable key")

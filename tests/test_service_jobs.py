"""The running relay does its periodic work: at start it checks the members' keys and
reminds, encrypted, a member whose key is about to expire (once, across restarts)."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import func, select

from relay.model import Message, MessageKind
from tests.support.keys import KeyFactory
from tests.support.mail import OpenedCopy
from tests.support.relayhome import CONTACT, RelayHome, RelayThread
from tests.support.smtpsink import SmtpSink


def test_expiring_key_reminder_is_sent_once_by_the_running_relay(tmp_path: Path, keys: KeyFactory):
    with SmtpSink() as sink:
        home = RelayHome(tmp_path, keys, smarthost=f"127.0.0.1:{sink.port}")
        soon = keys.make("soon", "security@soon.example", expire="10d")
        home.add_member(soon)
        home.add_member(keys.make("fine", "security@fine.example"))
        with RelayThread(home.settings):
            received = sink.wait_for(2, timeout=60)  # the member's reminder, the admins' list
        with RelayThread(home.settings):  # a restart does not send them again
            pass
    by_rcpt = {m.rcpt_tos[0]: m for m in received}
    assert set(by_rcpt) == {"security@soon.example", CONTACT}
    opened = OpenedCopy(home.client(soon), by_rcpt["security@soon.example"].data)
    assert opened.signer == home.list_fpr
    assert "expire" in opened.text.lower()
    # The security contact has no key here: its list is a plain notice naming the member.
    assert b"security@soon.example" in by_rcpt[CONTACT].data
    assert b"security@fine.example" not in by_rcpt[CONTACT].data
    assert len(sink.messages) == 2
    with home.db.transaction() as s:
        notices = s.execute(
            select(func.count(Message.id)).where(Message.kind == MessageKind.NOTICE)
        ).scalar()
    assert notices == 2

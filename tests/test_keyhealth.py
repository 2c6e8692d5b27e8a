"""Key import and the daily key check, with real keys: one expiring in ten days, an expired,
a revoked and a 1024-bit RSA key, and the real dispatcher delivering the reminder."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from relay.app import keyhealth, members
from relay.core.errors import KeyProblem, RelayError
from relay.model import Delivery, DeliveryStatus, HoldReason, KeyReminder, Message
from relay.runners.dispatcher import Dispatcher
from relay.store import delivery_queue, notices
from relay.store.spool import PAYLOAD, Spool
from tests.support.keys import KeyFactory
from tests.support.mail import OpenedCopy
from tests.support.relayhome import CONTACT, RelayHome

SOON = "security@soon.example"


@pytest.fixture
def home(tmp_path: Path, keys: KeyFactory) -> RelayHome:
    return RelayHome(tmp_path, keys)


def now() -> datetime:
    return datetime.now(UTC)


def messages(home: RelayHome) -> list[Message]:
    with home.db.transaction() as s:
        return list(s.execute(select(Message).order_by(Message.received_at, Message.id)).scalars())


# Import


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda keys: keys.expired("kh-expired"), "key has expired"),
        (lambda keys: keys.revoked("kh-revoked"), "key is revoked"),
        (lambda keys: keys.make("kh-weak", kind="rsa1024"), "1024 bits is too weak"),
        (lambda keys: keys.make("kh-signonly", kind="sign-only"), "no usable encryption"),
    ],
)
def test_key_import_refuses_unusable_keys_and_changes_nothing(
    home: RelayHome, keys: KeyFactory, make, message: str
) -> None:
    home.add_member(None, "security@keyless.example")
    key = make(keys)
    with pytest.raises(KeyProblem, match=message):
        members.add_member_keys(home.db, home.crypto, "security@keyless.example", key.public, "t")
    assert home.crypto.key_info(key.fingerprint) is None  # not even in the keyring
    [view] = members.list_members(home.db, home.crypto)
    assert view.fingerprints == []


def test_key_import_adds_to_an_existing_member_only(home: RelayHome, keys: KeyFactory) -> None:
    first = keys.make("kh-first", "security@two-keys.example")
    second = keys.make("kh-second", "security@two-keys.example")
    home.add_member(first)
    done = members.add_member_keys(
        home.db, home.crypto, "security@two-keys.example", second.public, "t"
    )
    assert done.added == [second.fingerprint] and done.released == 0
    assert done.member.fingerprints == [first.fingerprint, second.fingerprint]
    with pytest.raises(RelayError, match="already has every key"):
        members.add_member_keys(
            home.db, home.crypto, "security@two-keys.example", second.public, "t"
        )
    with pytest.raises(RelayError, match="no member"):
        members.add_member_keys(home.db, home.crypto, "nobody@two-keys.example", second.public, "t")
    home.add_member(None, "security@other.example")
    with pytest.raises(KeyProblem, match="already belongs to member security@two-keys"):
        members.add_member_keys(home.db, home.crypto, "security@other.example", first.public, "t")


def test_a_new_key_releases_deliveries_held_for_want_of_one_and_only_those(
    home: RelayHome, keys: KeyFactory
) -> None:
    expired = keys.expired("kh-lapsed", "security@lapsed.example")
    home.add_member(expired)
    spool = Spool(home.db)
    with home.db.transaction() as s:
        message_id, _ = notices.enqueue_list_notice(
            s, spool, subject="s", text="t", list_domain="example.org", reason="test"
        )
        embargoed, _ = notices.enqueue_list_notice(
            s, spool, subject="s", text="t", list_domain="example.org", reason="test"
        )
        d = s.execute(select(Delivery).where(Delivery.message_id == embargoed)).scalar_one()
        delivery_queue.hold(
            s, d, "under embargo", why=HoldReason.EMBARGO, code=delivery_queue.EMBARGO_HOLD
        )
    asyncio.run(Dispatcher(home.settings, home.db, spool, home.crypto).run_once())
    with home.db.transaction() as s:
        held = s.execute(select(Delivery).where(Delivery.message_id == message_id)).scalar_one()
        assert (held.status, held.hold_reason) == (DeliveryStatus.HELD, HoldReason.NO_KEY)
        assert held.last_reason.startswith("no usable key") and "expired" in held.last_reason

    fresh = keys.make("kh-renewed", "security@lapsed.example")
    done = members.add_member_keys(
        home.db, home.crypto, "security@lapsed.example", fresh.public, "t"
    )
    assert done.released == 1
    with home.db.transaction() as s:
        by_message = {d.message_id: d.status for d in s.execute(select(Delivery)).scalars()}
    assert by_message[message_id] == DeliveryStatus.QUEUED
    assert by_message[embargoed] == DeliveryStatus.HELD  # the embargo still holds it


# The daily check


def test_check_reports_every_key_and_reminds_the_expiring_one_once(
    home: RelayHome, keys: KeyFactory
) -> None:
    good = keys.make("kh-good", "security@good.example")
    soon = keys.make("kh-soon", SOON, expire="10d")
    expired = keys.expired("kh-old", "security@old.example")
    revoked = keys.revoked("kh-gone", "security@gone.example")
    weak = keys.make("kh-weak1024", "security@weak.example", kind="rsa1024")
    for key in (good, soon, expired, revoked, weak):
        home.add_member(key)
    home.add_member(None, "security@nokey.example")
    spool = Spool(home.db)
    checked_at = now()

    report = keyhealth.check_keys(home.db, spool, home.crypto, home.settings, checked_at)
    by_member = {k.member: k for k in report.keys}
    assert by_member["security@good.example"].status == "usable"
    assert by_member[SOON].status == "expiring"
    assert by_member[SOON].expires_at is not None
    assert timedelta(days=9) < by_member[SOON].expires_at - checked_at <= timedelta(days=10)
    assert by_member["security@old.example"].status == "expired"
    assert by_member["security@gone.example"].status == "revoked"
    assert by_member["security@weak.example"].status == "weak"
    assert {u.member for u in report.unreachable} == {
        "security@old.example",
        "security@gone.example",
        "security@weak.example",
        "security@nokey.example",
    }
    assert report.reminded == [soon.fingerprint]
    assert report.notice is not None

    # The admins' list: to the security contact only, naming the key.
    with home.db.transaction() as s:
        [to_contact] = s.get_one(Message, report.notice).deliveries
        assert to_contact.recipient == CONTACT
        [reminder] = s.execute(select(KeyReminder)).scalars()
        assert (reminder.fingerprint, reminder.expires_at) == (
            soon.fingerprint,
            by_member[SOON].expires_at,
        )
        to_member = s.execute(
            select(Delivery).where(Delivery.message_id == reminder.message_id)
        ).scalar_one()
        assert (to_member.recipient, to_member.plaintext_allowed) == (SOON, False)
        assert to_member.member_id is not None
    assert soon.fingerprint in spool.read(report.notice, PAYLOAD).decode()

    # Called again, later the same week: nothing new is sent.
    before = len(messages(home))
    again = keyhealth.check_keys(
        home.db, spool, home.crypto, home.settings, checked_at + timedelta(days=3)
    )
    assert (again.reminded, again.notice) == ([], None)
    assert len(messages(home)) == before

    # The reminder reaches the member encrypted to its key, through the real dispatcher.
    asyncio.run(Dispatcher(home.settings, home.db, spool, home.crypto).run_once())
    outbox = home.settings.delivery.outbox
    assert outbox is not None
    [copy] = outbox.glob(f"*--{SOON}--*")
    data = copy.read_bytes()
    assert soon.fingerprint.encode() not in data
    opened = OpenedCopy(home.client(soon), data)
    assert opened.decrypted and opened.signer == home.list_fpr
    assert soon.fingerprint in opened.text and "expires in" in opened.text


def test_past_the_expiry_the_member_is_unreachable_and_never_gets_plaintext(
    home: RelayHome, keys: KeyFactory
) -> None:
    soon = keys.make("kh-soon", SOON, expire="10d")
    home.add_member(soon)
    spool = Spool(home.db)
    later = now() + timedelta(days=11)
    report = keyhealth.check_keys(home.db, spool, home.crypto, home.settings, later)
    [state] = report.keys
    assert state.status == "expired"
    [unreachable] = report.unreachable
    assert unreachable.member == SOON and "expired" in unreachable.problem
    assert report.reminded == []  # too late for a reminder: the key is gone


def test_the_warning_window_comes_from_the_config(tmp_path: Path, keys: KeyFactory) -> None:
    home = RelayHome(tmp_path, keys, extra='[members]\nkey_expiry_warning = "5d"\n')
    home.add_member(keys.make("kh-soon", SOON, expire="10d"))
    spool = Spool(home.db)
    report = keyhealth.check_keys(home.db, spool, home.crypto, home.settings, now())
    assert [k.status for k in report.keys] == ["usable"] and report.reminded == []
    report = keyhealth.check_keys(
        home.db, spool, home.crypto, home.settings, now() + timedelta(days=6)
    )
    assert report.reminded == [report.keys[0].fingerprint]

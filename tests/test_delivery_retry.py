"""Retries on the schedule: 451 and a smarthost that is down are deferred and retried;
5xx fails at once and the security contact is told, without a word of the advisory.

The dispatcher runs pass by pass (`run_once`) on an injected clock: no waiting.
"""

from __future__ import annotations

import socket
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from relay.model import Delivery, DeliveryStatus, FailureReason, Message, MessageKind
from tests.support.keys import KeyFactory
from tests.support.mail import OpenedCopy, pgp_mime_signed, text_entity
from tests.support.relayhome import CONTACT, LIST, OffsetClock, RelayHome, RelayThread
from tests.support.relayhome import smtp_post as _post
from tests.support.smtpsink import SmtpSink

SECRET = "The flaw lets any tenant read another tenant's secrets."


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _home(tmp_path: Path, keys: KeyFactory, port: int) -> RelayHome:
    home = RelayHome(tmp_path, keys, smarthost=f"127.0.0.1:{port}")
    home.add_sender(keys.make("src", "src@example.org"))
    home.add_sender(keys.make("contact", CONTACT))
    home.add_member(keys.make("distro0", "security@distro0.example"))
    return home


def _post_advisory(home: RelayHome, keys: KeyFactory, relay: RelayThread) -> None:
    src = keys.make("src", "src@example.org")
    data = pgp_mime_signed(
        home.client(src),
        src.fingerprint,
        text_entity(SECRET + "\n"),
        subject="[EMBARGOED] CVE-2026-7777: secrets",
        sender=src.address,
        to=LIST,
    )
    relay.run(_post(relay.port, data))


def _deliveries(home: RelayHome) -> dict[str, Delivery]:
    with home.db.transaction() as s:
        return {d.recipient: d for d in s.execute(select(Delivery)).scalars()}


def test_451_is_deferred_on_the_backoff_schedule_then_delivered(tmp_path, keys):
    with SmtpSink() as sink:
        home = _home(tmp_path, keys, sink.port)
        clock = OffsetClock()
        sink.reply_next("451 4.3.0 Try again later", count=2)
        with RelayThread(home.settings, clock=clock, dispatch=False) as relay:
            _post_advisory(home, keys, relay)
            dispatcher = relay.relay.dispatcher
            assert relay.run(dispatcher.run_once()) == 1
            first = _deliveries(home)["security@distro0.example"]
            assert (first.status, first.last_code, first.attempts) == ("deferred", "451", 1)
            assert first.next_attempt_at - clock() == pytest.approx(
                timedelta(minutes=1), abs=timedelta(seconds=5)
            )
            assert relay.run(dispatcher.run_once()) == 0  # not due yet
            clock.offset = timedelta(minutes=1, seconds=1)
            assert relay.run(dispatcher.run_once()) == 1
            second = _deliveries(home)["security@distro0.example"]
            assert (second.status, second.attempts) == ("deferred", 2)
            # The backoff doubled: the next attempt is two minutes after the second one.
            assert second.next_attempt_at - clock() == pytest.approx(
                timedelta(minutes=2), abs=timedelta(seconds=5)
            )
            clock.offset += timedelta(minutes=2, seconds=1)
            assert relay.run(dispatcher.run_once()) == 1
        sent = _deliveries(home)["security@distro0.example"]
        assert (sent.status, sent.attempts) == ("sent", 3)
        (copy,) = sink.messages
        assert OpenedCopy(home.client(keys.make("distro0")), copy.data).signer == home.list_fpr


def test_smarthost_down_is_deferred_and_delivered_once_it_is_back(tmp_path, keys):
    port = _free_port()
    home = _home(tmp_path, keys, port)
    clock = OffsetClock()
    with RelayThread(home.settings, clock=clock, dispatch=False) as relay:
        _post_advisory(home, keys, relay)
        dispatcher = relay.relay.dispatcher
        assert relay.run(dispatcher.run_once()) == 1
        down = _deliveries(home)["security@distro0.example"]
        assert down.status == DeliveryStatus.DEFERRED
        assert down.last_code == "conn"
        with SmtpSink(port=port) as sink:
            clock.offset = timedelta(minutes=2)
            assert relay.run(dispatcher.run_once()) == 1
            assert len(sink.messages) == 1
    assert _deliveries(home)["security@distro0.example"].status == DeliveryStatus.SENT


def test_5xx_fails_at_once_and_the_notice_quotes_nothing(tmp_path, keys):
    with SmtpSink() as sink:
        home = _home(tmp_path, keys, sink.port)
        sink.reply_next("550 5.1.1 No such mailbox", recipient="security@distro0.example")
        with RelayThread(home.settings, dispatch=False) as relay:
            _post_advisory(home, keys, relay)
            relay.run(relay.relay.dispatcher.run_once())
        failed = _deliveries(home)["security@distro0.example"]
        assert (failed.status, failed.last_code, failed.attempts) == ("failed", "550", 1)
        assert failed.failure_reason == FailureReason.REJECTED
        (notice,) = sink.messages  # the failure notice to the security contact
        assert notice.rcpt_tos == (CONTACT,)
        opened = OpenedCopy(home.client(keys.make("contact", CONTACT)), notice.data)
        assert opened.signer == home.list_fpr
        assert "security@distro0.example" in opened.text and "550" in opened.text
        assert SECRET not in opened.text and "CVE-2026-7777" not in opened.text
        assert SECRET.encode() not in notice.data
        with home.db.transaction() as s:
            kinds = s.execute(select(Message.kind)).scalars().all()
        assert sorted(kinds) == sorted([MessageKind.POST, MessageKind.NOTICE])


def test_a_copy_whose_preparation_keeps_raising_ends_failed_and_the_contact_is_told(tmp_path, keys):
    """A missing message body makes every preparation raise: the error is counted on the
    copy, retried on the schedule, and after `max_errors` the copy fails `internal-error`
    (never leased again and again); `relay queue retry` puts it back."""
    from relay.app import admin
    from relay.model import MessageBody

    with SmtpSink() as sink:
        home = _home(tmp_path, keys, sink.port)
        clock = OffsetClock()
        with RelayThread(home.settings, clock=clock, dispatch=False) as relay:
            _post_advisory(home, keys, relay)
            with home.db.transaction() as s:
                s.query(MessageBody).delete()  # as if the post's bytes were lost
            dispatcher = relay.relay.dispatcher
            for attempt in range(1, 6):
                assert relay.run(dispatcher.run_once()) >= 1
                copy = _deliveries(home)["security@distro0.example"]
                assert copy.errors == attempt
                assert copy.last_code == "internal"
                assert "MissingPart" in (copy.last_reason or "")
                assert copy.status != DeliveryStatus.ACTIVE  # never left leased
                clock.offset += timedelta(hours=2)
            assert copy.status == DeliveryStatus.FAILED
            assert copy.failure_reason == FailureReason.INTERNAL_ERROR
            assert relay.run(dispatcher.run_once()) >= 0
            told = sink.wait_for(1, timeout=30)
        assert [m.rcpt_tos for m in told] == [(CONTACT,)]
        notice = OpenedCopy(home.client(keys.make("contact", CONTACT)), told[0].data)
        assert "internal error" in notice.text
        assert SECRET not in notice.text
        view = admin.retry_delivery(home.db, copy.id, "cli:test")
        assert view.status == DeliveryStatus.QUEUED
        again = _deliveries(home)["security@distro0.example"]
        assert (again.errors, again.failure_reason) == (0, None)

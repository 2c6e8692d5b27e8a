"""Bounces: each copy goes out from its own VERP address, and what comes back there is read.

Real gpg, real SMTP over 127.0.0.1 (the relay's edge; aiosmtplib out to a capturing sink as
the smarthost), a real database. The delivery status notifications are built for the copies
the relay really sent; the non-standard bounces are real ones (tests/data/bounces/).
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select

from relay.app import bounces, members, membership
from relay.app.bounces import Failure
from relay.core import verp
from relay.model import AuditEvent, Delivery, DeliveryStatus, Member, Message
from relay.model.messages import Bounce
from tests.support.keys import KeyFactory
from tests.support.mail import OpenedCopy, crlf, pgp_mime_signed, text_entity
from tests.support.relayhome import CONTACT, LIST, RelayHome, RelayThread, distributors
from tests.support.relayhome import smtp_post as _post
from tests.support.smtpsink import Received, SmtpSink

DATA = Path(__file__).parent / "data" / "bounces"
BODY = (
    "EMBARGOED until 2026-12-08 16:00 UTC.\n\n"
    "A flaw in kubelet's image puller lets a pod read another tenant's registry\n"
    "credentials from the node (CVE-2026-88888).\n"
)
MEMBER = "security@distro0.example"


# Messages


def _advisory(home: RelayHome, keys: KeyFactory, body: str = BODY) -> bytes:
    src = keys.make("src", "src@example.org")
    subject = "[EMBARGOED] CVE-2026-88888: kubelet credential leak"
    return pgp_mime_signed(
        home.client(src),
        src.fingerprint,
        text_entity(body, subject=subject),
        subject=subject,
        sender=src.address,
        to=LIST,
    )


def _dsn(
    copy: Received,
    *,
    recipient: str | None = None,
    action: str = "failed",
    status: str = "5.1.1",
    returned: bytes | None = None,
) -> bytes:
    """An RFC 3464 report on `copy`, as a Postfix smarthost writes one: its envelope sender
    and Message-ID come from the copy the relay sent."""
    rcpt = recipient or copy.rcpt_tos[0]
    domain = rcpt.rpartition("@")[2]
    copy_id = next(
        line.split(b":", 1)[1].strip().decode()
        for line in copy.data.splitlines()
        if line.lower().startswith(b"message-id:")
    )
    said = "User unknown in virtual mailbox table" if action == "failed" else "Mailbox full"
    returned_part = (
        b"Content-Type: message/rfc822\n\n" + returned
        if returned is not None
        else (
            f"Content-Type: text/rfc822-headers\n\n"
            f"Return-Path: <{copy.mail_from}>\nFrom: {LIST}\nTo: {LIST}\n"
            f"Message-ID: {copy_id}\nSubject: [...]\n"
        ).encode()
    )
    text = (
        "From: MAILER-DAEMON@smarthost.example (Mail Delivery System)\n"
        f"To: {copy.mail_from}\n"
        "Subject: Undelivered Mail Returned to Sender\n"
        "Auto-Submitted: auto-replied\n"
        "Message-ID: <20261202101500.4ABCD@smarthost.example>\n"
        "MIME-Version: 1.0\n"
        'Content-Type: multipart/report; report-type=delivery-status; boundary="B1"\n'
        "\n"
        "--B1\n"
        "Content-Type: text/plain; charset=us-ascii\n"
        "\n"
        "This is the mail system at host smarthost.example.\n\n"
        "I'm sorry to have to inform you that your message could not\n"
        "be delivered to one or more recipients.\n\n"
        f"<{rcpt}>: host mx.{domain} said: {status} {said}\n"
        "\n"
        "--B1\n"
        "Content-Type: message/delivery-status\n"
        "\n"
        "Reporting-MTA: dns; smarthost.example\n"
        "X-Postfix-Queue-ID: 4ABCD\n"
        "Arrival-Date: Wed,  2 Dec 2026 10:14:58 +0000 (UTC)\n"
        "\n"
        f"Final-Recipient: rfc822; {rcpt}\n"
        f"Original-Recipient: rfc822;{rcpt}\n"
        f"Action: {action}\n"
        f"Status: {status}\n"
        f"Remote-MTA: dns; mx.{domain}\n"
        f"Diagnostic-Code: smtp; 550 {status} <{rcpt}>: Recipient address rejected:\n"
        f"    {said}\n"
        "\n"
        "--B1\n"
    ).encode()
    return crlf(text + returned_part + b"\n--B1--\n")


async def _send(port: int, rcpts: list[str], data: bytes, sender: str = "") -> tuple[int, str]:
    """One message over SMTP (a bounce has the null sender); the final reply."""
    import aiosmtplib

    smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, timeout=30)
    await smtp.connect()
    try:
        await smtp.ehlo()
        await smtp.mail(sender)
        for rcpt in rcpts:
            await smtp.rcpt(rcpt)
        reply = await smtp.data(data)
        return reply.code, reply.message
    except aiosmtplib.SMTPResponseException as exc:
        return exc.code, exc.message
    finally:
        smtp.close()


async def _dialogue(port: int, commands: list[bytes]) -> list[bytes]:
    """Raw SMTP: the last line of the reply to each command."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)

    async def reply() -> bytes:
        line = await reader.readline()
        while line[3:4] == b"-":
            line = await reader.readline()
        return line

    replies = [await reply()]
    for command in commands:
        writer.write(command)
        await writer.drain()
        replies.append(await reply())
    writer.close()
    return replies


# State


def _delivery(home: RelayHome, recipient: str, n: int = 0) -> Delivery:
    with home.db.transaction() as s:
        rows = s.execute(
            select(Delivery).where(Delivery.recipient == recipient).order_by(Delivery.id)
        ).scalars()
        delivery = list(rows)[n]
        s.expunge(delivery)
        return delivery


def _copy_for(received: list[Received], recipient: str) -> Received:
    return next(m for m in received if m.rcpt_tos == (recipient,))


def _counts(home: RelayHome) -> tuple[int, int, int]:
    with home.db.transaction() as s:
        return (
            s.scalar(select(func.count()).select_from(Message)) or 0,
            s.scalar(select(func.count()).select_from(Delivery)) or 0,
            s.scalar(select(func.count()).select_from(Bounce)) or 0,
        )


def _actions(home: RelayHome, action: str) -> list[AuditEvent]:
    with home.db.transaction() as s:
        rows = list(s.execute(select(AuditEvent).where(AuditEvent.action == action)).scalars())
        for row in rows:
            s.expunge(row)
        return rows


def _member(home: RelayHome, address: str) -> Member:
    with home.db.transaction() as s:
        member = s.execute(select(Member).where(Member.address == address)).scalar_one()
        s.expunge(member)
        return member


@pytest.fixture
def home(tmp_path: Path, keys: KeyFactory, sink: SmtpSink) -> RelayHome:
    home = distributors(tmp_path, keys, sink.port, members=2, extra="[members]\nbounce_limit = 2\n")
    home.add_sender(keys.make("contact", CONTACT))
    return home


# The VERP address


def test_the_bounce_address_has_one_shape():
    token = verp.new_token()
    assert len(token) >= 16 and token == token.lower()
    assert verp.new_token() != token
    address = verp.bounce_address("distributors@example.org", token)
    assert address == f"distributors+bounce-{token}@example.org"
    assert verp.bounce_token(address, LIST) == token
    assert verp.bounce_token(address.upper(), LIST) == token  # case does not matter
    for other in (
        LIST,
        "distributors+bounce-@example.org",
        f"distributors+bounce-{token}+x@example.org",
        f"distributors+bounce-{token}x@example.org",
        f"distributors+bounce-{token[:-1]}@example.org",
        f"distributors+bounce-{token}@example.org.evil.example",
        f"distributors+bounce-{token}@other.example",
        f"other+bounce-{token}@example.org",
        f'"distributors+bounce-{token}"@example.org',
        f"distributors+bounce-{token.replace(token[0], '1')}@example.org",  # not base32
    ):
        assert verp.bounce_token(other, LIST) is None, other


def test_the_verdict_names_the_copy_or_nothing():
    hard = Failure(MEMBER, True, "5.1.1", "User unknown")
    soft = Failure(MEMBER, False, "4.2.2", "Mailbox full")
    other = Failure("security@distro1.example", True, "5.1.1", "")
    assert bounces.decide(MEMBER, [other]) is None
    assert bounces.decide(MEMBER, []) is None
    assert bounces.decide(MEMBER.upper(), [soft, hard]) == bounces.BounceVerdict(
        True, "5.1.1", "User unknown"
    )
    assert bounces.decide(MEMBER, [soft]) == bounces.BounceVerdict(False, "4.2.2", "Mailbox full")


# Through the running relay


def test_a_copy_is_sent_from_its_verp_address_and_its_dsn_fails_it(
    home: RelayHome, keys: KeyFactory, sink: SmtpSink
):
    with RelayThread(home.settings) as relay:
        assert relay.run(_post(relay.port, _advisory(home, keys)))[0] == 250
        received = sink.wait_for(2, timeout=60)
        copy = _copy_for(received, MEMBER)
        delivery = _delivery(home, MEMBER)
        assert copy.mail_from == verp.bounce_address(LIST, delivery.bounce_token)
        assert delivery.reference not in copy.mail_from
        other = _copy_for(received, "security@distro1.example")
        assert other.mail_from != copy.mail_from
        assert verp.bounce_token(other.mail_from, LIST) is not None

        dsn = _dsn(copy)
        code, reply = relay.run(_send(relay.port, [copy.mail_from], dsn))
        assert (code, reply) == (250, "2.0.0 Bounce received")
        before = _counts(home)
        # The same notification again counts once.
        assert relay.run(_send(relay.port, [copy.mail_from], dsn))[0] == 250
        assert _counts(home) == before

    failed = _delivery(home, MEMBER)
    assert failed.status == DeliveryStatus.FAILED
    assert failed.failure_reason == "bounced"
    assert failed.last_code == "5.1.1"
    assert failed.last_reason == (
        f"550 5.1.1 <{MEMBER}>: Recipient address rejected: User unknown in virtual mailbox table"
    )
    assert _delivery(home, "security@distro1.example").status == DeliveryStatus.SENT
    (row,) = _actions(home, "delivery.bounced")
    assert row.subject == str(failed.id)
    assert row.detail and row.detail["code"] == "5.1.1" and row.detail["failed"] is True
    with home.db.transaction() as s:
        (bounce,) = s.execute(select(Bounce)).scalars()
        assert (bounce.delivery_id, bounce.status) == (failed.id, "5.1.1")
    # One bounce is below the limit of two: the member is still plainly active.
    assert _member(home, MEMBER).bouncing_since is None
    assert _actions(home, "member.bouncing") == []


def test_bounces_up_to_the_limit_mark_the_member_bouncing_and_tell_the_contact(
    home: RelayHome, keys: KeyFactory, sink: SmtpSink
):
    contact = keys.make("contact", CONTACT)
    with RelayThread(home.settings) as relay:
        assert relay.run(_post(relay.port, _advisory(home, keys)))[0] == 250
        assert relay.run(_post(relay.port, _advisory(home, keys, BODY + "\nUpdate 1.\n")))[0] == 250
        received = sink.wait_for(4, timeout=60)
        copies = [m for m in received if m.rcpt_tos == (MEMBER,)]
        assert len(copies) == 2 and copies[0].mail_from != copies[1].mail_from
        for copy in copies:
            code, reply = relay.run(_send(relay.port, [copy.mail_from], _dsn(copy)))
            assert (code, reply) == (250, "2.0.0 Bounce received")
        (notice,) = [m for m in sink.wait_for(5, timeout=60) if m.rcpt_tos == (CONTACT,)]
        # Its notice has a delivery of its own, and so its own VERP address.
        assert verp.bounce_token(notice.mail_from, LIST) is not None

        # Still a member in every respect: the next post reaches it.
        assert relay.run(_post(relay.port, _advisory(home, keys, BODY + "\nUpdate 2.\n")))[0] == 250
        later = [m for m in sink.wait_for(7, timeout=60) if m.rcpt_tos == (MEMBER,)]
        assert len(later) == 3

    opened = OpenedCopy(home.client(contact), notice.data)
    assert opened.decrypted and opened.signer == home.list_fpr
    text = " ".join(opened.text.split())
    assert f"Copies for member {MEMBER} bounced 2 times within 7d" in text
    assert "the member is now bouncing" in text
    assert f"relay member resume {MEMBER}" in text
    assert "CVE-2026-88888" not in opened.text

    member = _member(home, MEMBER)
    assert membership.standing(member) == "bouncing" and member.state == "active"
    # What `relay member list` and `member show` print.
    with home.db.transaction() as s:
        listed = s.execute(select(Member).where(Member.address == MEMBER)).scalar_one()
        assert members.member_view(home.crypto, listed).state == "bouncing"
    (row,) = _actions(home, "member.bouncing")
    assert row.subject == MEMBER and row.detail
    assert (row.detail["old"], row.detail["new"]) == ("active", "bouncing")
    assert [d.failure_reason for d in _rows(home, MEMBER)] == ["bounced", "bounced", None]

    # `relay member resume` makes it plainly active again, and a member that is bouncing
    # already is not marked (nor its contact told) twice.
    change = membership.change_state(home.db, MEMBER, "resume", "cli:test", "alias fixed")
    assert (change.old, change.new) == ("bouncing", "active")
    assert _member(home, MEMBER).bouncing_since is None
    with pytest.raises(Exception, match="already active"):
        membership.change_state(home.db, MEMBER, "resume", "cli:test", "again")


def _rows(home: RelayHome, recipient: str) -> list[Delivery]:
    with home.db.transaction() as s:
        rows = list(
            s.execute(
                select(Delivery).where(Delivery.recipient == recipient).order_by(Delivery.id)
            ).scalars()
        )
        for row in rows:
            s.expunge(row)
        return rows


def test_a_soft_dsn_changes_nothing_but_the_audit(
    home: RelayHome, keys: KeyFactory, sink: SmtpSink
):
    with RelayThread(home.settings) as relay:
        assert relay.run(_post(relay.port, _advisory(home, keys)))[0] == 250
        copy = _copy_for(sink.wait_for(2, timeout=60), MEMBER)
        before = _counts(home)
        delayed = _dsn(copy, action="delayed", status="4.2.2")
        assert relay.run(_send(relay.port, [copy.mail_from], delayed))[0] == 250
    assert _counts(home) == before
    delivery = _delivery(home, MEMBER)
    assert delivery.status == DeliveryStatus.SENT and delivery.failure_reason is None
    (row,) = _actions(home, "delivery.delayed")
    assert row.subject == str(delivery.id) and row.detail and row.detail["code"] == "4.2.2"
    assert _actions(home, "delivery.bounced") == []


def test_junk_at_the_bounce_addresses_is_refused_and_changes_nothing(
    home: RelayHome, keys: KeyFactory, sink: SmtpSink
):
    with RelayThread(home.settings) as relay:
        post = _advisory(home, keys)
        assert relay.run(_post(relay.port, post))[0] == 250
        copy = _copy_for(sink.wait_for(2, timeout=60), MEMBER)
        token = verp.bounce_token(copy.mail_from, LIST)
        assert token is not None
        before = _counts(home)
        local, _, domain = LIST.partition("@")
        for rcpt in (
            f"{local}+bounce-{verp.new_token()}@{domain}",  # no such delivery
            f"{local}+bounce-@{domain}",
            f"{local}+bounce-{token}+x@{domain}",
            f"{local}+bounce-{token}@elsewhere.example",
        ):
            code, reply = relay.run(_send(relay.port, [rcpt], _dsn(copy)))
            assert (code, reply.split()[0]) == (550, "5.1.1"), rcpt
        refused = {
            "a plain message": crlf(b"From: someone@example.net\nSubject: hello\n\nhello\n"),
            "the signed post itself": post,
            "a DSN for another recipient": _dsn(copy, recipient="security@distro1.example"),
            # Names the member, and has no From: one of flufl.bounce's detectors raises.
            "a note naming the member": crlf(f"Subject: hi\n\n{MEMBER} is fine\n".encode()),
        }
        for why, data in refused.items():
            code, reply = relay.run(_send(relay.port, [copy.mail_from], data))
            assert (code, reply) == (
                550,
                "5.1.1 not a delivery status notification for this address",
            ), why
    assert _counts(home) == before
    assert {d.status for d in _rows(home, MEMBER)} == {DeliveryStatus.SENT}
    assert _actions(home, "delivery.bounced") == _actions(home, "delivery.delayed") == []


def test_an_oversized_bounce_is_refused_with_552(home: RelayHome, keys: KeyFactory, sink: SmtpSink):
    big = b"Subject: x\n\n" + b"".join(b"x" * 80 + b"\n" for _ in range(4000))  # 324 KiB
    with RelayThread(home.settings) as relay:
        assert relay.run(_post(relay.port, _advisory(home, keys)))[0] == 250
        copy = _copy_for(sink.wait_for(2, timeout=60), MEMBER)
        code, reply = relay.run(_send(relay.port, [copy.mail_from], _dsn(copy, returned=big)))
        assert (code, reply.split()[0]) == (552, "5.3.4")
        # SIZE in MAIL FROM already says so at RCPT.
        replies = relay.run(
            _dialogue(
                relay.port,
                [
                    b"EHLO client.example\r\n",
                    b"MAIL FROM:<> SIZE=300000\r\n",
                    f"RCPT TO:<{copy.mail_from}>\r\n".encode(),
                ],
            )
        )
        assert replies[3].startswith(b"552 5.3.4")
    assert _delivery(home, MEMBER).status == DeliveryStatus.SENT


def test_a_bounce_address_beside_the_list_address_is_answered_452(
    home: RelayHome, keys: KeyFactory, sink: SmtpSink
):
    with RelayThread(home.settings) as relay:
        assert relay.run(_post(relay.port, _advisory(home, keys)))[0] == 250
        received = sink.wait_for(2, timeout=60)
        bounce = _copy_for(received, MEMBER).mail_from
        another = _copy_for(received, "security@distro1.example").mail_from
        replies = relay.run(
            _dialogue(
                relay.port,
                [
                    b"EHLO client.example\r\n",
                    b"MAIL FROM:<>\r\n",
                    f"RCPT TO:<{LIST}>\r\n".encode(),
                    f"RCPT TO:<{bounce}>\r\n".encode(),  # after the list: 452
                    b"RSET\r\n",
                    b"MAIL FROM:<>\r\n",
                    f"RCPT TO:<{bounce}>\r\n".encode(),
                    f"RCPT TO:<{LIST}>\r\n".encode(),  # after a bounce address: 452
                    f"RCPT TO:<{another}>\r\n".encode(),  # a second bounce address: 452
                ],
            )
        )
    assert replies[3].startswith(b"250 2.1.5")
    assert replies[4].startswith(b"452 4.5.3")
    assert replies[7].startswith(b"250 2.1.5")
    assert replies[8].startswith(b"452 4.5.3") and replies[9].startswith(b"452 4.5.3")


def test_a_bounce_quoting_an_embargoed_advisory_is_never_distributed(
    home: RelayHome, keys: KeyFactory, sink: SmtpSink
):
    """A bounce returns the whole message it bounces: here a member's reply quoting the
    advisory. It settles the copy and reaches no one."""
    with RelayThread(home.settings) as relay:
        assert relay.run(_post(relay.port, _advisory(home, keys)))[0] == 250
        copy = _copy_for(sink.wait_for(2, timeout=60), MEMBER)
        quoted = crlf(
            f"From: {MEMBER}\nTo: {LIST}\nSubject: Re: CVE-2026-88888\n\n".encode()
            + b"".join(b"> " + line.encode() + b"\n" for line in BODY.splitlines())
        )
        before = _counts(home)
        code, _ = relay.run(_send(relay.port, [copy.mail_from], _dsn(copy, returned=quoted)))
        assert code == 250
        relay.relay.dispatcher.wake()  # were anything queued, it would go now
        with pytest.raises(TimeoutError):
            sink.wait_for(3, timeout=3)
    messages, deliveries, bounced = _counts(home)
    assert (messages, deliveries, bounced) == (before[0], before[1], before[2] + 1)
    assert _delivery(home, MEMBER).failure_reason == "bounced"
    with home.db.transaction() as s:  # nothing is pending for anyone
        pending = s.scalar(
            select(func.count())
            .select_from(Delivery)
            .where(Delivery.status.in_([DeliveryStatus.QUEUED, DeliveryStatus.HELD]))
        )
        assert pending == 0


@pytest.mark.parametrize(
    ("sample", "address"),
    [("sendmail_02.txt", "foo@rbd.spb.ru"), ("exim-02.eml", "kijitora@example.jp")],
)
def test_real_non_standard_bounces_fail_the_copy_they_name(
    tmp_path: Path, keys: KeyFactory, sink: SmtpSink, sample: str, address: str
):
    home = distributors(tmp_path, keys, sink.port, members=0)
    home.add_member(keys.make(address.partition("@")[0], address))
    with RelayThread(home.settings) as relay:
        assert relay.run(_post(relay.port, _advisory(home, keys)))[0] == 250
        (copy,) = sink.wait_for(1, timeout=60)
        data = crlf((DATA / sample).read_bytes())
        code, reply = relay.run(_send(relay.port, [copy.mail_from], data))
        assert (code, reply) == (250, "2.0.0 Bounce received")
    delivery = _delivery(home, address)
    assert (delivery.status, delivery.failure_reason) == (DeliveryStatus.FAILED, "bounced")
    assert delivery.last_code == "5.0.0"


def test_a_broken_bounce_is_read_as_far_as_it_goes():
    """Hostile structure does not crash the reading: a report cut short still reads, and a
    message that never names the recipient is refused before any detector runs."""
    from relay.inbound import Rejection
    from relay.inbound.bounces import read_bounce

    cut = crlf(
        b"Content-Type: multipart/report; report-type=delivery-status; boundary=B\n\n"
        b"--B\nContent-Type: message/delivery-status\n\n"
        + f"Final-Recipient: rfc822; {MEMBER}\nAction: failed\nStatus: 5.1.1\n".encode()
    )
    assert [(f.address, f.permanent) for f in read_bounce(cut, MEMBER)] == [(MEMBER, True)]
    with pytest.raises(Rejection) as refused:
        read_bounce(crlf(b"Subject: hi\n\n" + b"\xff" * 100 + b"\n"), MEMBER)
    assert refused.value.reply.startswith("550 5.1.1")


def test_only_bounces_within_the_window_count(home: RelayHome):
    """A member's old bounces do not add up: only those within `bounce_window` count."""
    member_id = _member(home, MEMBER).id
    now = datetime.now(UTC)
    with home.db.transaction() as s:
        s.add(Message(id="m1", subject="s", sha256="x"))
        old, fresh = (
            Delivery(
                message_id="m1",
                member_id=member_id,
                recipient=MEMBER,
                copy_message_id=f"<c{n}@example.org>",
                status=DeliveryStatus.SENT,
                created_at=now - timedelta(days=n),
            )
            for n in (9, 0)
        )
        fresh.recipient = MEMBER.upper()  # one copy per message and recipient
        s.add_all([old, fresh])
        s.flush()
        s.add(
            Bounce(
                delivery_id=old.id, member_id=member_id, at=now - timedelta(days=8), status="5.1.1"
            )
        )
        token = fresh.bounce_token
    failures = [Failure(MEMBER, True, "5.1.1", "gone")]
    applied = bounces.apply(home.db, home.spool, home.settings, token, failures, now)
    assert applied.counted and applied.bouncing is None  # one within 7 days; the limit is 2
    assert _member(home, MEMBER).bouncing_since is None

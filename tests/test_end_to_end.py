"""One advisory through the whole relay: SMTP in, durable accept, per-member copies out.

Real gpg, real SMTP over 127.0.0.1 (the relay's aiosmtpd edge, aiosmtplib out to
a capturing sink as the smarthost), real SQLite.
"""

from __future__ import annotations

import email
import email.policy
from pathlib import Path

import aiosmtplib
import pytest
from sqlalchemy import func, select, text

from relay.model import Delivery, DeliveryStatus, Message, MessageBody, MessageKind
from tests.support.keys import KeyFactory
from tests.support.mail import OpenedCopy, pgp_mime_signed, text_entity
from tests.support.relayhome import CONTACT, LIST, RelayHome, RelayThread, distributors
from tests.support.relayhome import smtp_post as _post
from tests.support.smtpsink import SmtpSink

BODY = (
    "EMBARGOED until 2026-12-08 16:00 UTC.\n\n"
    "A flaw in kube-apiserver lets an attacker with create rights on Services\n"
    "intercept traffic of other tenants (CVE-2026-99999).\n"
)
SUBJECT = "[EMBARGOED] CVE-2026-99999: kube-apiserver traffic interception"


@pytest.fixture
def home(tmp_path: Path, keys: KeyFactory, sink: SmtpSink) -> RelayHome:
    return distributors(tmp_path, keys, sink.port, members=3)


def _signed_advisory(home: RelayHome, keys: KeyFactory) -> bytes:
    src = keys.make("src", "src@example.org")
    return pgp_mime_signed(
        home.client(src),
        src.fingerprint,
        text_entity(BODY, subject=SUBJECT),
        subject=SUBJECT,
        sender=src.address,
        to=LIST,
    )


def test_signed_advisory_reaches_every_member_encrypted_to_that_member_alone(
    home: RelayHome, keys: KeyFactory, sink: SmtpSink
):
    post = _signed_advisory(home, keys)
    with RelayThread(home.settings) as relay:
        code, reply = relay.run(_post(relay.port, post))
        assert code == 250 and "2.0.0" in reply
        received = sink.wait_for(3, timeout=60)

    members = [keys.make(f"distro{n}", f"security@distro{n}.example") for n in range(3)]
    by_rcpt = {m.rcpt_tos: m for m in received}
    assert set(by_rcpt) == {(m.address,) for m in members}
    secret_lines = [line for line in BODY.splitlines() if len(line) > 20] + [SUBJECT]
    message_ids = set()
    references: dict[str, str | None] = {}
    for member in members:
        data = by_rcpt[(member.address,)].data
        for line in secret_lines:
            assert line.encode() not in data
        outer = email.message_from_bytes(data, policy=email.policy.default)
        assert outer["Subject"] == "[...]"
        assert outer["To"] == LIST  # the member is only the envelope recipient
        assert outer.get_content_type() == "multipart/encrypted"
        for other in members:
            if other is not member:
                assert other.address.encode() not in data
        opened = OpenedCopy(home.client(member), data)
        assert opened.decrypted
        assert opened.signer == home.list_fpr
        assert opened.root["Subject"] == SUBJECT
        assert "intercept traffic of other tenants" in opened.text
        # The copy names its recipient inside only, by a reference stored with the delivery.
        assert opened.root["Message-ID"] == outer["Message-ID"]
        references[member.address] = opened.reference
        notice = " ".join(opened.text.split())
        assert f"Copy reference {opened.reference}: this copy was made for {member.address}" in (
            notice
        )
        message_ids.add(outer["Message-ID"])
        # Another member's key alone cannot read this copy.
        other = members[(members.index(member) + 1) % 3]
        assert not OpenedCopy(home.client(other), data).decrypted
    assert len(message_ids) == 3

    with home.db.transaction() as s:
        rows = s.execute(select(Delivery)).scalars().all()
        assert {d.status for d in rows} == {DeliveryStatus.SENT}
        assert {d.copy_message_id for d in rows} == message_ids
        assert {d.recipient: d.reference for d in rows} == references
    assert len(set(references.values())) == 3


def test_member_without_usable_key_gets_nothing_and_the_contact_is_told(
    tmp_path: Path, keys: KeyFactory, sink: SmtpSink
):
    home = RelayHome(tmp_path, keys, smarthost=f"127.0.0.1:{sink.port}")
    src = keys.make("src", "src@example.org")
    home.add_sender(src)
    contact = keys.make("contact", CONTACT)
    home.add_sender(contact)
    good = keys.make("distro0", "security@distro0.example")
    home.add_member(good)
    home.add_member(None, "security@keyless.example")
    post = pgp_mime_signed(
        home.client(src),
        src.fingerprint,
        text_entity(BODY),
        subject=SUBJECT,
        sender=src.address,
        to=LIST,
    )
    with RelayThread(home.settings) as relay:
        code, _ = relay.run(_post(relay.port, post))
        assert code == 250
        received = sink.wait_for(2, timeout=60)

    rcpts = sorted(m.rcpt_tos[0] for m in received)
    assert rcpts == sorted([CONTACT, good.address])
    assert all(b"keyless" not in m.data or m.rcpt_tos == (CONTACT,) for m in received)
    notice = next(m for m in received if m.rcpt_tos == (CONTACT,))
    opened = OpenedCopy(home.client(contact), notice.data)
    assert opened.signer == home.list_fpr
    text = opened.text
    assert "security@keyless.example" in text and "no usable key" in text
    assert "intercept traffic" not in text and "CVE-2026-99999" not in text
    with home.db.transaction() as s:
        held = s.execute(select(Delivery).where(Delivery.status == DeliveryStatus.HELD)).scalars()
        assert [d.recipient for d in held] == ["security@keyless.example"]


def _nested(depth: int) -> bytes:
    head = b"Subject: deep\r\n"
    for n in range(depth):
        head += f'Content-Type: multipart/mixed; boundary="b{n}"\r\n\r\n--b{n}\r\n'.encode()
    body = b"Content-Type: text/plain\r\n\r\nx\r\n"
    tail = b"".join(f"\r\n--b{n}--\r\n".encode() for n in reversed(range(depth)))
    return head + body + tail


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda data: data.replace(b"\r\n", b"\n", 3), "550 5.5.2"),  # bare LF (smuggling)
        (lambda data: data.replace(b"tenants", b"tenantz"), "550 5.7.7"),  # tampered body
        (lambda data: text_entity(BODY), "550 5.7.1"),  # not signed at all
        (lambda data: _nested(21), "554 5.6.0"),  # MIME nested too deep
        (  # base64 that does not decode strictly
            lambda data: (
                b"Content-Type: text/plain\r\nContent-Transfer-Encoding: base64"
                b"\r\n\r\nQUJD*RA==\r\n"
            ),
            "554 5.6.0",
        ),
    ],
)
def test_refused_posts_store_nothing(home: RelayHome, keys: KeyFactory, mutate, expected):
    post = mutate(_signed_advisory(home, keys))
    with RelayThread(home.settings, dispatch=False) as relay:
        code, reply = relay.run(_raw_post(relay.port, post))
    assert f"{code} {reply}".startswith(expected)
    with home.db.transaction() as s:
        assert s.execute(select(func.count(Message.id))).scalar() == 0
        assert s.execute(select(func.count(Delivery.id))).scalar() == 0
        assert s.execute(select(func.count()).select_from(MessageBody)).scalar() == 0


async def _raw_post(port: int, data: bytes) -> tuple[int, str]:
    """Send DATA bytes exactly as given (aiosmtplib would repair bare line ends)."""
    import asyncio

    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    await reader.readline()
    for command in (
        b"HELO client.example\r\n",
        b"MAIL FROM:<src@example.org>\r\n",
        f"RCPT TO:<{LIST}>\r\n".encode(),
        b"DATA\r\n",
    ):
        writer.write(command)
        await writer.drain()
        await reader.readline()
    writer.write(data + b"\r\n.\r\n")
    await writer.drain()
    reply = (await reader.readline()).decode().strip()
    writer.close()
    code, _, text = reply.partition(" ")
    return int(code), text


async def _dialogue(port: int, commands: list[bytes]) -> list[bytes]:
    """Speak raw SMTP and collect one reply per command."""
    import asyncio

    async def reply() -> bytes:  # the last line of a possibly multi-line reply
        line = await reader.readline()
        while line[3:4] == b"-":
            line = await reader.readline()
        return line

    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    replies = [await reply()]
    for command in commands:
        writer.write(command)
        await writer.drain()
        replies.append(await reply())
    writer.close()
    return replies


def test_smtp_edge_refuses_relaying_oversize_and_too_many_recipients(home: RelayHome):
    with RelayThread(home.settings, dispatch=False) as relay:
        replies = relay.run(
            _dialogue(
                relay.port,
                [
                    b"EHLO client.example\r\n",
                    b"MAIL FROM:<src@example.org> SIZE=99999999\r\n",
                    b"MAIL FROM:<src@example.org>\r\n",
                    b"RCPT TO:<victim@elsewhere.example>\r\n",
                    f"RCPT TO:<{LIST}>\r\n".encode(),
                    f"RCPT TO:<{LIST.upper()}>\r\n".encode(),
                    f"RCPT TO:<{LIST}>\r\n".encode(),
                    f"RCPT TO:<{LIST}>\r\n".encode(),
                    f"RCPT TO:<{LIST}>\r\n".encode(),
                ],
            )
        )
    ehlo_last = replies[1]
    assert ehlo_last.startswith(b"250")
    assert replies[2].startswith(b"552 5.3.4")
    assert replies[3].startswith(b"250")
    assert replies[4].startswith(b"550 5.1.1")
    assert [r[:9] for r in replies[5:]] == [b"250 2.1.5"] * 3 + [b"452 4.5.3"] * 2


def test_oversize_data_is_refused_with_enhanced_code(home: RelayHome):
    big = b"Subject: x\r\n\r\n" + (b"A" * 998 + b"\r\n") * 1100
    with RelayThread(home.settings, dispatch=False) as relay:
        code, reply = relay.run(_post(relay.port, big))
    assert (code, reply.split()[0]) == (552, "5.3.4")
    with home.db.transaction() as s:
        assert s.execute(select(func.count(Message.id))).scalar() == 0


def test_too_many_recipients_gets_452(home: RelayHome):
    async def many(port: int) -> tuple[int, str]:
        smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, timeout=30)
        await smtp.connect()
        await smtp.ehlo()
        await smtp.mail("src@example.org")
        replies = []
        for _ in range(4):
            try:
                replies.append((await smtp.rcpt(LIST)).code)
            except aiosmtplib.SMTPRecipientRefused as exc:
                replies.append(exc.code)
                last = exc.message
        smtp.close()
        return replies, last

    with RelayThread(home.settings, dispatch=False) as relay:
        codes, last = relay.run(many(relay.port))
    # The list address may be named again, but every RCPT counts toward the limit of 3.
    assert codes == [250, 250, 250, 452]
    assert last.startswith("4.5.3")


def test_notice_kind_is_recorded(home: RelayHome, keys: KeyFactory, sink: SmtpSink):
    """The relay's own notices are messages too, and never carry advisory text."""
    home.add_member(None, "security@keyless.example")
    post = _signed_advisory(home, keys)
    with RelayThread(home.settings) as relay:
        assert relay.run(_post(relay.port, post))[0] == 250
        sink.wait_for(4, timeout=60)  # three members plus the notice (plaintext: no contact key)
    with home.db.transaction() as s:
        notices = s.execute(select(Message).where(Message.kind == MessageKind.NOTICE)).scalars()
        (notice,) = list(notices)
        assert "CVE" not in notice.subject


def test_database_failure_at_accept_answers_451_and_keeps_nothing(
    home: RelayHome, keys: KeyFactory
):
    """The sender keeps the message and retries: no 250 without a commit."""
    post = _signed_advisory(home, keys)
    with home.db.transaction() as s:
        s.execute(text("DROP TABLE used_signatures"))  # every accept records its signature
    with RelayThread(home.settings, dispatch=False) as relay:
        code, reply = relay.run(_post(relay.port, post))
    assert (code, reply.split()[0]) == (451, "4.3.0")
    with home.db.transaction() as s:
        assert s.execute(select(func.count(Message.id))).scalar() == 0
        assert s.execute(select(func.count()).select_from(MessageBody)).scalar() == 0

"""What a client may cost the SMTP edge, over real SMTP on 127.0.0.1 with real gpg keys.

Connection caps (in all, per address), the idle timer that only progress resets (NOOP
and byte trickles are cut), the limit on bad commands, the pre-scan that refuses a post
while it arrives, the order of the inbound checks (nothing but linear work before the
signature), and a signed post accepted while junk is being refused beside it. Outcomes
are asserted, never durations: timeouts are configured short and the 421 is awaited.
"""

from __future__ import annotations

import asyncio
import threading
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select

from relay.core.config import Settings, load
from relay.core.errors import ConfigError
from relay.inbound.limits import Busy, WorkPool
from relay.inbound.prescan import MAX_FIELDS, MAX_PARTS
from relay.model import Message, MessageBody
from tests.support.keys import KeyFactory
from tests.support.mail import pgp_mime_signed, text_entity
from tests.support.relayhome import LIST, RelayHome, RelayThread, distributors, smtp_post
from tests.support.smtpsink import SmtpSink

BODY = "EMBARGOED until 2026-12-08 16:00 UTC.\n\nA flaw in kube-proxy (CVE-2026-4242).\n"
# Bounded waits for replies, so that a failing test ends; never asserted on.
REPLY_WAIT = 30.0
TRICKLE_PAUSE = 0.05
TRICKLE_STEPS = 400


@pytest.fixture
def home(tmp_path: Path, keys: KeyFactory, sink: SmtpSink) -> RelayHome:
    return distributors(tmp_path, keys, sink.port, members=1)


def limited(home: RelayHome, **smtp: object) -> Settings:
    """The home's settings with some [smtp] values changed."""
    return home.settings.model_copy(update={"smtp": home.settings.smtp.model_copy(update=smtp)})


def signed_post(home: RelayHome, keys: KeyFactory, body: str = BODY) -> bytes:
    src = keys.make("src", "src@example.org")
    return pgp_mime_signed(
        home.client(src),
        src.fingerprint,
        text_entity(body),
        subject="[EMBARGOED] CVE-2026-4242",
        sender=src.address,
        to=LIST,
    )


def stored_messages(home: RelayHome) -> int:
    with home.db.transaction() as s:
        return s.execute(select(func.count(Message.id))).scalar() or 0


class Client:
    """Raw SMTP over one connection: bytes exactly as given, one reply per command."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def connect(cls, port: int, source: str = "127.0.0.1") -> Client:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
        return cls(reader, writer)

    async def reply(self) -> bytes:
        """The last line of the next reply; b"" once the server closed the connection."""
        line = await asyncio.wait_for(self.reader.readline(), REPLY_WAIT)
        while line[3:4] == b"-":
            line = await asyncio.wait_for(self.reader.readline(), REPLY_WAIT)
        return line

    async def send(self, data: bytes) -> bytes:
        self.writer.write(data)
        await self.writer.drain()
        return await self.reply()

    async def envelope(self) -> None:
        assert (await self.reply()).startswith(b"220")
        assert (await self.send(b"EHLO client.example\r\n")).startswith(b"250 ")
        assert (await self.send(b"MAIL FROM:<src@example.org>\r\n")).startswith(b"250 ")
        assert (await self.send(f"RCPT TO:<{LIST}>\r\n".encode())).startswith(b"250 ")

    async def post(self, data: bytes) -> bytes:
        """A whole transaction; `data` is sent as is (dot-stuffed by the caller)."""
        await self.envelope()
        assert (await self.send(b"DATA\r\n")).startswith(b"354")
        return await self.send(data + b"\r\n.\r\n")

    def close(self) -> None:
        self.writer.close()


# Connections


def test_connections_beyond_the_caps_are_answered_421_and_closed(home: RelayHome) -> None:
    settings = limited(home, max_connections=3, max_connections_per_ip=2)

    async def scenario(port: int) -> list[bytes]:
        first = await Client.connect(port)
        second = await Client.connect(port)
        greetings = [await first.reply(), await second.reply()]
        third = await Client.connect(port)  # a third from the same address
        per_address = [await third.reply(), await third.reply()]
        other = await Client.connect(port, "127.0.0.2")  # the third in all
        greetings.append(await other.reply())
        fourth = await Client.connect(port, "127.0.0.3")  # one more than in all
        total = [await fourth.reply(), await fourth.reply()]
        for client in (first, second, third, other, fourth):
            client.close()
        return greetings + per_address + total

    with RelayThread(settings, dispatch=False) as relay:
        replies = relay.run(scenario(relay.port))
    assert [r[:3] for r in replies[:3]] == [b"220"] * 3
    assert replies[3].startswith(b"421 4.7.0 Too many connections from your address")
    assert replies[4] == b""  # closed
    assert replies[5].startswith(b"421 4.7.0 Too many connections;")
    assert replies[6] == b""


def test_a_closed_connection_frees_its_place(home: RelayHome) -> None:
    settings = limited(home, max_connections=1, max_connections_per_ip=1)

    async def scenario(port: int) -> list[bytes]:
        first = await Client.connect(port)
        await first.reply()
        assert (await first.send(b"QUIT\r\n")).startswith(b"221")
        assert await first.reply() == b""
        first.close()
        for _ in range(TRICKLE_STEPS):  # the server counts the close when it sees it
            again = await Client.connect(port)
            greeting = await again.reply()
            again.close()
            if greeting.startswith(b"220"):
                return [greeting]
            await asyncio.sleep(TRICKLE_PAUSE)
        return [greeting]

    with RelayThread(settings, dispatch=False) as relay:
        (greeting,) = relay.run(scenario(relay.port))
    assert greeting.startswith(b"220")


# Idle sessions


def test_a_noop_every_tick_does_not_keep_a_session_alive(home: RelayHome) -> None:
    settings = limited(home, idle_timeout=timedelta(seconds=0.5))

    async def scenario(port: int) -> tuple[list[bytes], bytes]:
        client = await Client.connect(port)
        await client.reply()
        answers = []
        for _ in range(TRICKLE_STEPS):
            for command in (b"NOOP\r\n", b"RSET\r\n", b"HELP\r\n", b"VRFY <a@example.org>\r\n"):
                answer = await client.send(command)
                if not answer.startswith(b"2"):
                    client.close()
                    return answers, answer
                answers.append(answer)
            await asyncio.sleep(TRICKLE_PAUSE)
        client.close()
        return answers, b"(never cut)"

    with RelayThread(settings, dispatch=False) as relay:
        answers, last = relay.run(scenario(relay.port))
    assert last.startswith(b"421 4.4.2 ") and b"Idle too long" in last
    assert answers and all(a[4:9] in (b"2.0.0", b"2.5.0") for a in answers)  # enhanced codes


def test_a_byte_trickle_in_data_is_cut(home: RelayHome, keys: KeyFactory) -> None:
    settings = limited(home, idle_timeout=timedelta(seconds=0.5))
    post = signed_post(home, keys)

    async def scenario(port: int) -> bytes:
        client = await Client.connect(port)
        await client.envelope()
        assert (await client.send(b"DATA\r\n")).startswith(b"354")
        answer = b"(never cut)"
        for byte in post[:TRICKLE_STEPS]:
            client.writer.write(bytes([byte]))
            try:
                answer = await asyncio.wait_for(client.reader.readline(), TRICKLE_PAUSE)
                break
            except TimeoutError:
                continue
        client.close()
        return answer

    with RelayThread(settings, dispatch=False) as relay:
        answer = relay.run(scenario(relay.port))
    assert answer.startswith(b"421 4.4.2 ")
    assert stored_messages(home) == 0


# Bad commands


def test_too_many_bad_commands_end_the_session(home: RelayHome) -> None:
    settings = limited(home, max_bad_commands=4)

    async def scenario(port: int) -> list[bytes]:
        client = await Client.connect(port)
        await client.reply()
        answers = [await client.send(b"EHLO client.example\r\n")]
        answers.append(await client.send(b"RCPT TO:<victim@elsewhere.example>\r\n"))
        answers.append(await client.send(b"MAIL FROM:<src@example.org>\r\n"))
        answers.append(await client.send(b"RCPT TO:<victim@elsewhere.example>\r\n"))
        answers.append(await client.send(b"HELO\r\n"))
        answers.append(await client.send(b"MAIL FROM:<src@example.org>\r\n"))  # the 4th error
        answers.append(await client.reply())
        answers.append(await client.reply())
        client.close()
        return answers

    with RelayThread(settings, dispatch=False) as relay:
        answers = relay.run(scenario(relay.port))
    ehlo, need_mail, mail, relaying, syntax, nested, cut, closed = answers
    assert ehlo.startswith(b"250 ")
    assert need_mail.startswith(b"503 5.5.1 ")
    assert mail.startswith(b"250 ")
    assert relaying.startswith(b"550 5.1.1 ")
    assert syntax.startswith(b"501 5.5.4 ")
    assert nested.startswith(b"503 5.5.1 ")  # a MAIL transaction is open
    assert cut.startswith(b"421 4.7.0 ") and b"Too many bad commands" in cut
    assert closed == b""


def test_unknown_commands_end_the_session(home: RelayHome) -> None:
    async def scenario(port: int) -> list[bytes]:
        client = await Client.connect(port)
        await client.reply()
        answers = [await client.send(b"XYZZY\r\n") for _ in range(5)]
        answers.append(await client.reply())
        client.close()
        return answers

    with RelayThread(home.settings, dispatch=False) as relay:
        answers = relay.run(scenario(relay.port))
    assert all(a.startswith(b"500 5.5.1 ") for a in answers[:4])
    assert answers[4].startswith(b"421 4.7.0 Too many unrecognized commands")
    assert answers[5] == b""


def test_ehlo_advertises_enhanced_status_codes_the_greeting_has_none(home: RelayHome) -> None:
    async def scenario(port: int) -> tuple[bytes, list[bytes]]:
        client = await Client.connect(port)
        greeting = await client.reply()
        client.writer.write(b"EHLO client.example\r\n")
        lines = [await client.reader.readline()]
        while lines[-1][3:4] == b"-":
            lines.append(await client.reader.readline())
        client.close()
        return greeting, lines

    with RelayThread(home.settings, dispatch=False) as relay:
        greeting, lines = relay.run(scenario(relay.port))
    assert b"250-ENHANCEDSTATUSCODES\r\n" in lines
    assert lines[-1] == b"250 HELP\r\n"
    assert greeting.startswith(b"220 example.org ")  # the greeting names the host first


# The pre-scan, and the order of the checks


def _empty_parts(count: int) -> bytes:
    return (
        b"From: src@example.org\r\nSubject: parts\r\nMIME-Version: 1.0\r\n"
        b'Content-Type: multipart/mixed; boundary="b"\r\n\r\n'
        # The first part is broken in a way only the full parse would see: bad base64.
        b"--b\r\nContent-Type: text/plain\r\nContent-Transfer-Encoding: base64\r\n\r\n"
        b"QUJD*RA==\r\n" + b"--b\r\n\r\n" * count + b"--b--\r\n"
    )


def _nested(depth: int) -> bytes:
    head = b"Subject: deep\r\n"
    for n in range(depth):
        head += f'Content-Type: multipart/mixed; boundary="b{n}"\r\n\r\n--b{n}\r\n'.encode()
    tail = b"".join(f"\r\n--b{n}--\r\n".encode() for n in reversed(range(depth)))
    return head + b"Content-Type: text/plain\r\n\r\nx\r\n" + tail


def _many_fields(count: int) -> bytes:
    return b"".join(b"X-Field-%d: value\r\n" % n for n in range(count)) + b"\r\nbody\r\n"


@pytest.mark.parametrize(
    ("build", "why"),
    [
        (lambda: _empty_parts(100_000), f"more than {MAX_PARTS} MIME parts"),
        (lambda: _nested(5_000), "MIME nesting deeper than 20 levels"),
        (lambda: _many_fields(5_000), f"more than {MAX_FIELDS} header fields"),
        # 999 octets: within SMTP's limit, over RFC 5322's.
        (lambda: b"Subject: x\r\nX-Long: " + b"a" * 991 + b"\r\n\r\nbody\r\n", "longer than 998"),
    ],
    ids=["empty-parts", "nested", "header-fields", "long-line"],
)
def test_the_prescan_refuses_an_unsigned_post_before_any_parse(
    home: RelayHome, build, why: str
) -> None:
    """The replies are the pre-scan's: the full parse has no part count at all (it would
    also have refused the bad base64 of the first part first), and 5,000 levels would
    have taken it to its recursion limit."""

    async def scenario(port: int) -> tuple[bytes, bytes]:
        client = await Client.connect(port)
        answer = await client.post(build())
        again = await client.send(b"NOOP\r\n")  # the session goes on
        client.close()
        return answer, again

    with RelayThread(home.settings, dispatch=False) as relay:
        answer, again = relay.run(scenario(relay.port))
    assert answer.startswith(b"554 5.6.0 malformed message: ")
    assert why.encode() in answer
    assert again.startswith(b"250 2.0.0")
    assert stored_messages(home) == 0


def test_an_unsigned_post_is_refused_before_the_strict_parse(home: RelayHome) -> None:
    """Bad base64 inside a part would be the strict parse's 554; unsigned comes first."""
    post = _empty_parts(3)
    with RelayThread(home.settings, dispatch=False) as relay:
        code, reply = relay.run(smtp_post(relay.port, post))
    assert (code, reply) == (550, "5.7.1 the post is not signed; sign it with OpenPGP")


@pytest.mark.parametrize(
    ("tampered", "expected"),
    [
        (False, (554, "5.6.0 malformed message: a header field cannot be parsed")),
        (True, (550, "5.7.7 bad signature")),
    ],
    ids=["signed", "tampered"],
)
def test_the_strict_parse_runs_once_the_signature_is_good(
    home: RelayHome, keys: KeyFactory, tampered: bool, expected: tuple[int, str]
) -> None:
    """An outer From that the header parser cannot take (2,500 nested comments, folded
    within the line limits) is refused by the strict parse, after gpg: a bad signature
    is the answer when there is one."""
    post = signed_post(home, keys)
    lines = [b"(" * 500] * 5 + [b")" * 500] * 5
    post = post.replace(
        b"From: src@example.org\r\n", b"From: " + b"\r\n ".join(lines) + b" src@example.org\r\n"
    )
    if tampered:
        post = post.replace(b"kube-proxy", b"kube-proxx")
    with RelayThread(home.settings, dispatch=False) as relay:
        code, reply = relay.run(smtp_post(relay.port, post))
    assert code == expected[0] and reply.startswith(expected[1]), (code, reply)
    assert stored_messages(home) == 0


def test_dot_stuffed_lines_and_pipelined_commands(home: RelayHome, keys: KeyFactory) -> None:
    body = "Lines that start with dots:\n.\n..\n. one\n.. two\n" + BODY
    post = signed_post(home, keys, body)
    stuffed = b"\r\n".join(
        b"." + line if line.startswith(b".") else line for line in post.split(b"\r\n")
    )

    async def scenario(port: int) -> list[bytes]:
        client = await Client.connect(port)
        await client.envelope()
        assert (await client.send(b"DATA\r\n")).startswith(b"354")
        assert stuffed.endswith(b"\r\n")
        client.writer.write(stuffed + b".\r\nQUIT\r\n")  # QUIT sent without waiting
        await client.writer.drain()
        answers = [await client.reply(), await client.reply()]
        client.close()
        return answers

    with RelayThread(home.settings, dispatch=False) as relay:
        queued, bye = relay.run(scenario(relay.port))
    assert queued.startswith(b"250 2.0.0 Queued as ")
    assert bye.startswith(b"221 ")
    with home.db.transaction() as s:
        (raw,) = s.execute(select(MessageBody.data).where(MessageBody.part == "raw")).scalars()
    assert raw == post  # stored as signed: the stuffing is undone


@pytest.mark.parametrize("piece", [1, 2, 3, 5, 4096])
def test_data_cut_into_pieces_anywhere_reads_the_same(
    home: RelayHome, keys: KeyFactory, piece: int
) -> None:
    """The end of the data, dot-stuffing and the pre-scan work across chunk boundaries."""
    post = signed_post(home, keys, ".a dotted first line\n" + BODY)
    stuffed = post.replace(b"\r\n.", b"\r\n..") + b".\r\n"

    async def scenario(port: int) -> bytes:
        client = await Client.connect(port)
        await client.envelope()
        assert (await client.send(b"DATA\r\n")).startswith(b"354")
        for start in range(0, len(stuffed), piece):
            client.writer.write(stuffed[start : start + piece])
            await client.writer.drain()
            await asyncio.sleep(0)  # the relay shares this loop: let it read each piece
        answer = await client.reply()
        client.close()
        return answer

    with RelayThread(home.settings, dispatch=False) as relay:
        answer = relay.run(scenario(relay.port))
    assert answer.startswith(b"250 2.0.0 Queued as ")
    with home.db.transaction() as s:
        (raw,) = s.execute(select(MessageBody.data).where(MessageBody.part == "raw")).scalars()
    assert raw == post


# A signed post beside a flood of junk


def test_a_signed_post_is_accepted_while_junk_is_refused(home: RelayHome, keys: KeyFactory) -> None:
    post = signed_post(home, keys)
    junk = [_empty_parts(20_000), _nested(3_000), b"Subject: plain\r\n\r\n" + b"x\r\n" * 50_000]
    stop = threading.Event()

    async def flood(port: int, refusals: list[bytes]) -> None:
        client = await Client.connect(port)
        n = 0
        await client.envelope()
        while not stop.is_set():
            assert (await client.send(b"DATA\r\n")).startswith(b"354")
            refusals.append(await client.send(junk[n % len(junk)] + b"\r\n.\r\n"))
            n += 1
            assert (await client.send(b"MAIL FROM:<src@example.org>\r\n")).startswith(b"250")
            assert (await client.send(f"RCPT TO:<{LIST}>\r\n".encode())).startswith(b"250")
        client.close()

    async def scenario(port: int) -> tuple[tuple[int, str], list[bytes]]:
        refusals: list[bytes] = []
        flooders = [asyncio.create_task(flood(port, refusals)) for _ in range(4)]
        while len(refusals) < 8:
            await asyncio.sleep(TRICKLE_PAUSE)
        result = await smtp_post(port, post)
        stop.set()
        await asyncio.gather(*flooders)
        return result, refusals

    with RelayThread(home.settings, dispatch=False) as relay:
        (code, reply), refusals = relay.run(scenario(relay.port), timeout=300)
    assert code == 250 and reply.startswith("2.0.0 Queued as ")
    assert refusals and all(r[:3] in (b"554", b"550") for r in refusals)
    assert stored_messages(home) == 1


# The pools and the configuration


def test_a_full_pool_refuses_at_once() -> None:
    pool = WorkPool(1, 1, "test-pool")
    release = threading.Event()

    async def scenario() -> list[str]:
        first = asyncio.create_task(pool.run(release.wait, REPLY_WAIT))
        second = asyncio.create_task(pool.run(release.wait, REPLY_WAIT))
        await asyncio.sleep(0)
        outcomes = []
        try:
            await pool.run(release.wait, REPLY_WAIT)
        except Busy:
            outcomes.append("busy")
        release.set()
        outcomes += [str(await first), str(await second)]
        outcomes.append(str(await pool.run(lambda: "room again")))
        return outcomes

    try:
        assert asyncio.run(scenario()) == ["busy", "True", "True", "room again"]
    finally:
        pool.shutdown()


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ('idle_timeout = "0s"', "smtp.idle_timeout: must be longer than zero"),
        ("max_connections = 0", "smtp.max_connections: Input should be greater than or equal to 1"),
        ("max_connections = 5\nmax_connections_per_ip = 6", "'max_connections_per_ip' must not"),
        ('max_bad_commands = "many"', "smtp.max_bad_commands: "),
    ],
)
def test_bad_smtp_limits_name_the_key(home: RelayHome, line: str, expected: str) -> None:
    path = home.config_path
    text = path.read_text().replace("max_recipients = 3\n", f"max_recipients = 3\n{line}\n")
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load(path)
    assert expected in str(caught.value)

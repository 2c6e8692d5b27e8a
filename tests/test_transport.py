"""Transports against real sockets: aiosmtplib talking to an aiosmtpd sink on 127.0.0.1."""

from __future__ import annotations

import asyncio
import socket
import stat
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

from relay.core.config import DeliverySettings
from relay.outbound.transport import (
    REASON_LIMIT,
    OutboxTransport,
    Outcome,
    SmtpTransport,
    clean_reason,
    dot_stuffed,
    make_transport,
)
from tests.support.smtpsink import SmtpSink, wait_for_files

T = TypeVar("T")
LIST = "distributors@example.org"
ALICE = "alice@example.net"
BOB = "bob@example.net"


def message(message_id: str = "<copy.1@example.org>") -> bytes:
    # Lines starting with "." and "From " test SMTP transparency end to end.
    return (
        f"From: {LIST}\r\nTo: {ALICE}\r\nSubject: [...]\r\nMessage-ID: {message_id}\r\n"
        "MIME-Version: 1.0\r\n\r\n"
        ".leading dot\r\n..two dots\r\nFrom the top\r\n.\r\nlast line\r\n"
    ).encode()


def run(scenario: Callable[[SmtpTransport], Awaitable[T]], port: int, timeout: float = 10) -> T:
    async def main() -> T:
        transport = SmtpTransport(
            "127.0.0.1", port, timeout=timeout, local_hostname="relay.example.org"
        )
        try:
            return await scenario(transport)
        finally:
            await transport.close()

    return asyncio.run(main())


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_accepted_copy_is_sent_and_arrives_byte_identical(sink: SmtpSink) -> None:
    data = message()
    result = run(lambda t: t.send(LIST, ALICE, data), sink.port)
    assert (result.outcome, result.code) == (Outcome.SENT, "250")
    (received,) = sink.wait_for(1)
    assert received.data == data
    assert (received.mail_from, received.rcpt_tos) == (LIST, (ALICE,))


def test_dot_stuffing_is_what_aiosmtplib_would_send_for_a_crlf_message() -> None:
    from aiosmtplib.protocol import PERIOD_REGEX, normalize_message_line_endings

    samples = [
        message(),
        b".first line is a dot line\r\n.\r\n..\r\n",
        b"no final line end\r\n.dot",
        b"a\r\n\r\n.\r\n",
        b".",
    ]
    for sample in samples:
        expected = PERIOD_REGEX.sub(b"..", normalize_message_line_endings(sample)) + b".\r\n"
        assert dot_stuffed(sample) == expected, sample
    # A CR or LF outside a pair is left to aiosmtplib, which rewrites line ends.
    assert dot_stuffed(b"bare\nline feed\r\n") is None
    assert dot_stuffed(b"bare\rreturn\r\n") is None


def test_a_copy_with_bare_line_feeds_still_arrives_with_crlf(sink: SmtpSink) -> None:
    data = message().replace(b"\r\n", b"\n")
    result = run(lambda t: t.send(LIST, ALICE, data), sink.port)
    assert (result.outcome, result.code) == (Outcome.SENT, "250")
    (received,) = sink.wait_for(1)
    assert received.data == message()


def test_one_connection_serves_successive_sends(sink: SmtpSink) -> None:
    async def scenario(transport: SmtpTransport) -> list[Outcome]:
        return [(await transport.send(LIST, rcpt, message())).outcome for rcpt in (ALICE, BOB)]

    assert run(scenario, sink.port) == [Outcome.SENT, Outcome.SENT]
    assert [m.rcpt_tos for m in sink.wait_for(2)] == [(ALICE,), (BOB,)]
    assert sink.connections == 1


def test_451_is_temporary_and_the_connection_is_reset_for_the_next_copy(sink: SmtpSink) -> None:
    sink.reply_next("451 4.3.0 try later")

    async def scenario(transport: SmtpTransport) -> tuple:
        return await transport.send(LIST, ALICE, message()), await transport.send(
            LIST, BOB, message()
        )

    refused, accepted = run(scenario, sink.port)
    assert (refused.outcome, refused.code, refused.reason) == (
        Outcome.TEMPORARY,
        "451",
        "4.3.0 try later",
    )
    assert accepted.outcome is Outcome.SENT
    (received,) = sink.wait_for(1)
    assert received.rcpt_tos == (BOB,)  # RSET cleared the refused envelope
    assert sink.connections == 1


def test_550_for_one_recipient_is_permanent(sink: SmtpSink) -> None:
    sink.reply_next("550 5.1.1 no such user", recipient=BOB)

    async def scenario(transport: SmtpTransport) -> tuple:
        return await transport.send(LIST, BOB, message()), await transport.send(
            LIST, ALICE, message()
        )

    refused, accepted = run(scenario, sink.port)
    assert (refused.outcome, refused.code, refused.reason) == (
        Outcome.PERMANENT,
        "550",
        "5.1.1 no such user",
    )
    assert accepted.outcome is Outcome.SENT
    assert [m.rcpt_tos for m in sink.wait_for(1)] == [(ALICE,)]


def test_5xx_after_data_is_permanent(sink: SmtpSink) -> None:
    sink.reply_next("554 5.6.0 content rejected", stage="data")
    result = run(lambda t: t.send(LIST, ALICE, message()), sink.port)
    assert (result.outcome, result.code) == (Outcome.PERMANENT, "554")
    assert sink.messages == []


def test_nothing_listening_is_temporary() -> None:
    result = run(lambda t: t.send(LIST, ALICE, message()), free_port())
    assert (result.outcome, result.code) == (Outcome.TEMPORARY, "conn")
    assert result.reason


def test_silent_server_times_out_as_temporary() -> None:
    async def scenario() -> tuple:
        server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        transport = SmtpTransport("127.0.0.1", port, timeout=0.2, local_hostname="relay.test")
        try:
            return await transport.send(LIST, ALICE, message())
        finally:
            await transport.close()
            server.close()

    result = asyncio.run(scenario())
    assert (result.outcome, result.code) == (Outcome.TEMPORARY, "conn")


def test_reconnects_after_the_smarthost_restarts(sink: SmtpSink) -> None:
    async def scenario(transport: SmtpTransport) -> list[Outcome]:
        outcomes = [(await transport.send(LIST, ALICE, message("<a@example.org>"))).outcome]
        sink.stop()  # drops the open connection
        outcomes.append((await transport.send(LIST, ALICE, message("<b@example.org>"))).outcome)
        sink.start()  # same port
        outcomes.append((await transport.send(LIST, ALICE, message("<c@example.org>"))).outcome)
        return outcomes

    assert run(scenario, sink.port) == [Outcome.SENT, Outcome.TEMPORARY, Outcome.SENT]
    assert [b"<c@example.org>" in m.data for m in sink.wait_for(2)] == [False, True]
    assert sink.connections == 2


def test_idle_connection_dropped_by_the_server_is_replaced_without_failing(
    sink: SmtpSink,
) -> None:
    async def scenario(transport: SmtpTransport) -> list[Outcome]:
        first = await transport.send(LIST, ALICE, message("<a@example.org>"))
        sink.stop()
        sink.start()  # the transport has not yet noticed its connection is gone
        second = await transport.send(LIST, ALICE, message("<b@example.org>"))
        return [first.outcome, second.outcome]

    assert run(scenario, sink.port) == [Outcome.SENT, Outcome.SENT]
    assert len(sink.wait_for(2)) == 2
    assert sink.connections == 2


def test_421_on_a_reused_connection_is_retried_on_a_fresh_one(sink: SmtpSink) -> None:
    async def scenario(transport: SmtpTransport) -> list[Outcome]:
        first = await transport.send(LIST, ALICE, message("<a@example.org>"))
        sink.reply_next("421 4.4.2 idle too long, closing", stage="mail")
        second = await transport.send(LIST, ALICE, message("<b@example.org>"))
        return [first.outcome, second.outcome]

    assert run(scenario, sink.port) == [Outcome.SENT, Outcome.SENT]
    assert len(sink.wait_for(2)) == 2
    assert sink.connections == 2


def test_421_on_a_fresh_connection_is_temporary(sink: SmtpSink) -> None:
    sink.reply_next("421 4.3.2 shutting down", stage="mail")
    result = run(lambda t: t.send(LIST, ALICE, message()), sink.port)
    assert (result.outcome, result.code) == (Outcome.TEMPORARY, "421")
    assert sink.messages == []


def test_unusable_address_is_permanent_and_never_reaches_the_server(sink: SmtpSink) -> None:
    async def scenario(transport: SmtpTransport) -> list[tuple[Outcome, str]]:
        results = [
            await transport.send(LIST, "jöran@example.net", message()),
            await transport.send(LIST, "a@example.net>\r\nRCPT TO:<b@example.net", message()),
            await transport.send(LIST, ALICE, message()),
        ]
        return [(r.outcome, r.code) for r in results]

    assert run(scenario, sink.port) == [
        (Outcome.PERMANENT, "addr"),
        (Outcome.PERMANENT, "addr"),
        (Outcome.SENT, "250"),
    ]
    assert [m.rcpt_tos for m in sink.wait_for(1)] == [(ALICE,)]


def test_reasons_are_one_sanitised_line() -> None:
    assert clean_reason("4.3.0 busy\r\n\x1b[31mred\x00") == "4.3.0 busy\\r\\n\\x1b[31mred\\x00"
    long = clean_reason("x" * 1000)
    assert len(long) == REASON_LIMIT and long.endswith("...")


# Outbox


def test_outbox_writes_the_exact_bytes_privately(tmp_path: Path) -> None:
    outbox = OutboxTransport(tmp_path / "outbox")
    data = message()
    result = asyncio.run(outbox.send(LIST, ALICE, data))
    assert (result.outcome, result.code) == (Outcome.SENT, "250")
    (written,) = (tmp_path / "outbox").iterdir()
    assert written.read_bytes() == data
    assert stat.S_IMODE(written.stat().st_mode) == 0o600
    assert written.name.startswith("copy.1@example.org--alice@example.net--")
    assert written.suffix == ".eml"


def test_outbox_names_follow_message_id_and_recipient(tmp_path: Path) -> None:
    outbox = OutboxTransport(tmp_path)

    async def scenario() -> None:
        await outbox.send(LIST, ALICE, message("<one@example.org>"))
        await outbox.send(LIST, ALICE, message("<one@example.org>"))  # a retry replaces
        await outbox.send(LIST, BOB, message("<one@example.org>"))
        await outbox.send(LIST, ALICE, message("<two@example.org>"))

    asyncio.run(scenario())
    names = sorted(p.name for p in tmp_path.iterdir())
    assert len(names) == 3
    assert not any(name.startswith(".") for name in names)  # no temporary files left
    assert len({OutboxTransport.name_for(message("<x/../y@e>"), "a@b")}) == 1
    assert "/" not in OutboxTransport.name_for(message("<x/../../y@e>"), "../a@b")


def test_outbox_write_failure_is_temporary(tmp_path: Path) -> None:
    outbox = OutboxTransport(tmp_path / "outbox")
    (tmp_path / "outbox").rmdir()
    (tmp_path / "outbox").write_bytes(b"")  # a file where the folder was: ENOTDIR, even as root
    result = asyncio.run(outbox.send(LIST, ALICE, message()))
    assert (result.outcome, result.code) == (Outcome.TEMPORARY, "io")


def test_make_transport_follows_the_settings(tmp_path: Path) -> None:
    smtp = make_transport(DeliverySettings(smarthost="127.0.0.1:2525"), "relay.example.org")
    assert isinstance(smtp, SmtpTransport)
    assert (smtp.host, smtp.port, smtp.local_hostname) == ("127.0.0.1", 2525, "relay.example.org")
    outbox = make_transport(DeliverySettings(outbox=tmp_path / "out"), "relay.example.org")
    assert isinstance(outbox, OutboxTransport)
    assert outbox.folder == tmp_path / "out"


def test_sink_runs_as_a_separate_process(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parent.parent
    command = [
        sys.executable,
        "-m",
        "tests.support.smtpsink",
        "--port",
        "0",
        "--out",
        str(tmp_path),
    ]
    with subprocess.Popen(command, cwd=root, stdout=subprocess.PIPE, text=True) as process:
        try:
            assert process.stdout is not None
            banner = process.stdout.readline()
            assert banner.startswith("listening on 127.0.0.1:"), banner
            port = int(banner.rsplit(":", 1)[1])
            data = message()
            assert run(lambda t: t.send(LIST, ALICE, data), port).outcome is Outcome.SENT
            (received,) = wait_for_files(tmp_path, 1)
            assert (received.mail_from, received.rcpt_tos, received.data) == (LIST, (ALICE,), data)
        finally:
            process.terminate()
            assert process.wait(timeout=10) == 0  # a clean stop on SIGTERM

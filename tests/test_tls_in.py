"""STARTTLS on the SMTP edge (RFC 3207), over real TLS on 127.0.0.1.

A throwaway CA (tests/support/certs.py) issues the relay's certificate; the relay runs
in-process (RelayThread), or as a real `relay serve` process for the SIGHUP path; the
clients are smtplib and a raw socket. What is checked: STARTTLS advertised before TLS
only, TLS 1.2 or later, `require_tls` refusing MAIL in plaintext with 530 5.7.0, the
session starting over after the handshake (bytes pipelined behind STARTTLS discarded),
signed posts accepted over TLS and logged with its version, the certificate re-read on
reload (SIGHUP) with open sessions and the queue untouched and a bad file keeping the old
certificate, and the configuration errors of `relay serve`.
"""

from __future__ import annotations

import logging
import os
import signal
import smtplib
import socket
import ssl
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from sqlalchemy import func, select

from relay.core.config import Settings, load
from relay.core.errors import ConfigError
from relay.inbound.replies import with_status
from relay.inbound.tls import ServerTLS, server_context
from relay.model import Delivery, Message
from tests.support.certs import CertificateAuthority, Issued
from tests.support.keys import KeyFactory
from tests.support.mail import pgp_mime_signed, text_entity
from tests.support.relayhome import LIST, RelayHome, RelayThread, distributors
from tests.support.smtpsink import SmtpSink

SENDER = "src@example.org"
TIMEOUT = 30.0  # bounded waits, so that a failing test ends; never asserted on


# The relay's certificate: always at the same two paths, which a reload reads again.


def install(home: RelayHome, issued: Issued) -> tuple[Path, Path]:
    """Write `issued` over the relay's tls/relay.pem and tls/relay.key."""
    folder = home.root / "tls"
    folder.mkdir(exist_ok=True)
    cert, key = folder / "relay.pem", folder / "relay.key"
    cert.write_bytes(issued.cert.read_bytes())
    key.write_bytes(issued.key.read_bytes())
    key.chmod(0o600)
    return cert, key


def with_tls(home: RelayHome, issued: Issued | None, **smtp: object) -> Settings:
    """The home's config file with `[smtp]` tls_cert and tls_key (`issued`, installed) and
    the other `smtp` keys given, loaded again."""
    lines = []
    if issued is not None:
        install(home, issued)
        lines += ['tls_cert = "tls/relay.pem"', 'tls_key = "tls/relay.key"']
    for name, value in smtp.items():
        lines.append(f"{name} = {str(value).lower() if isinstance(value, bool) else value!r}")
    text = home.config_path.read_text(encoding="utf-8")
    home.config_path.write_text(text.replace("[smtp]\n", "[smtp]\n" + "\n".join(lines) + "\n", 1))
    home.settings = load(home.config_path)
    return home.settings


@pytest.fixture
def home(tmp_path: Path, keys: KeyFactory, sink: SmtpSink) -> RelayHome:
    return distributors(tmp_path, keys, sink.port, members=1)


@pytest.fixture
def ca(tmp_path: Path) -> CertificateAuthority:
    return CertificateAuthority.create(tmp_path / "ca")


@pytest.fixture
def issued(ca: CertificateAuthority, tmp_path: Path) -> Issued:
    return ca.issue("relay.test", tmp_path / "server")


def signed_post(home: RelayHome, keys: KeyFactory, cve: str = "CVE-2026-4242") -> bytes:
    src = keys.make("src", SENDER)
    body = f"EMBARGOED until 2026-12-08 16:00 UTC.\n\nA flaw in kube-proxy ({cve}).\n"
    return pgp_mime_signed(
        home.client(src),
        src.fingerprint,
        text_entity(body),
        subject=f"[EMBARGOED] {cve}",
        sender=src.address,
        to=LIST,
    )


def count(home: RelayHome, model: type) -> int:
    with home.db.transaction() as s:
        return s.scalar(select(func.count()).select_from(model)) or 0


# Clients


@contextmanager
def smtp_client(port: int) -> Iterator[smtplib.SMTP]:
    client = smtplib.SMTP("127.0.0.1", port, timeout=TIMEOUT)
    try:
        yield client
    finally:
        client.close()


def over_tls(client: smtplib.SMTP, context: ssl.SSLContext) -> smtplib.SMTP:
    """EHLO, STARTTLS and EHLO again, as a client does."""
    client.ehlo("client.example")
    code, reply = client.starttls(context=context)
    assert (code, reply) == (220, b"2.0.0 Ready to start TLS")
    client.ehlo("client.example")
    return client


def peer_certificate(client: smtplib.SMTP) -> bytes:
    assert isinstance(client.sock, ssl.SSLSocket)
    der = client.sock.getpeercert(binary_form=True)
    assert der is not None
    return der


def der(issued: Issued) -> bytes:
    return issued.certificate.public_bytes(serialization.Encoding.DER)


def post_over(client: smtplib.SMTP, data: bytes) -> tuple[int, bytes]:
    """One mail transaction on an open session; the reply to the data."""
    assert client.mail(SENDER)[0] == 250
    assert client.rcpt(LIST)[0] == 250
    return client.data(data)


def served_certificate(port: int, ca: CertificateAuthority) -> bytes:
    """The certificate a new session is handed, verified with `ca`."""
    with smtp_client(port) as client:
        over_tls(client, ca.client_context())
        certificate = peer_certificate(client)
        client.quit()
    return certificate


def in_loop(relay: RelayThread, call: Callable[[], Any]) -> Any:
    """`call` on the relay's event loop, as a signal handler runs there."""

    async def run() -> Any:
        return call()

    return relay.run(run())


def logged(caplog: pytest.LogCaptureFixture, step: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.getMessage().split(" ", 1)[0] == step]


class RawSession:
    """SMTP over a plain socket, then TLS on the same socket: bytes exactly as given."""

    def __init__(self, port: int) -> None:
        self.sock: socket.socket = socket.create_connection(("127.0.0.1", port), TIMEOUT)

    def line(self) -> bytes:
        # Byte by byte: nothing beyond the reply is read, so nothing the server sent after
        # it (in plaintext, or a TLS handshake) is taken from the socket by mistake.
        data = b""
        while not data.endswith(b"\n"):
            chunk = self.sock.recv(1)
            if not chunk:
                break
            data += chunk
        return data

    def reply(self) -> bytes:
        """The last line of the next reply."""
        line = self.line()
        while line[3:4] == b"-":
            line = self.line()
        return line

    def send(self, data: bytes) -> bytes:
        self.sock.sendall(data)
        return self.reply()

    def start_tls(self, context: ssl.SSLContext) -> None:
        self.sock = context.wrap_socket(self.sock, server_hostname="127.0.0.1")

    def close(self) -> None:
        self.sock.close()


# STARTTLS and EHLO


def test_starttls_is_advertised_before_tls_only_and_the_session_is_tls_1_2_or_later(
    home: RelayHome, ca: CertificateAuthority, issued: Issued, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    settings = with_tls(home, issued, require_tls=True)
    with RelayThread(settings, dispatch=False) as relay, smtp_client(relay.port) as client:
        client.ehlo("client.example")
        assert client.has_extn("starttls")
        assert client.has_extn("enhancedstatuscodes")
        assert not client.has_extn("auth")  # no SMTP AUTH here, before TLS or after
        over_tls(client, ca.client_context())
        assert not client.has_extn("starttls")
        assert not client.has_extn("auth")
        assert client.has_extn("enhancedstatuscodes")
        assert peer_certificate(client) == der(issued)
        assert isinstance(client.sock, ssl.SSLSocket)
        version = client.sock.version()
        assert version in ("TLSv1.2", "TLSv1.3")
        # STARTTLS under TLS is out of sequence.
        assert client.docmd("STARTTLS") == (503, b"5.5.1 Already under TLS")
        assert client.noop() == (250, b"2.0.0 OK")
        client.quit()
    (up,) = logged(caplog, "tls")
    assert f"version={version}" in up.getMessage()
    assert "cipher=TLS_" in up.getMessage() or "cipher=ECDHE" in up.getMessage()


def test_tls_1_2_is_taken_and_tls_1_1_fails_the_handshake(
    home: RelayHome,
    ca: CertificateAuthority,
    issued: Issued,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    settings = with_tls(home, issued, require_tls=True, max_connections_per_ip=2)
    tls12 = ca.client_context()
    tls12.maximum_version = ssl.TLSVersion.TLSv1_2
    with RelayThread(settings, dispatch=False) as relay:
        with smtp_client(relay.port) as client:
            over_tls(client, tls12)
            assert isinstance(client.sock, ssl.SSLSocket)
            assert client.sock.version() == "TLSv1.2"
            client.quit()
        # More failed handshakes than the per-address cap: each frees its place.
        for _ in range(3):
            with smtp_client(relay.port) as client:
                client.ehlo("old.example")
                with pytest.raises(ssl.SSLError) as failed:
                    client.starttls(context=_tls_1_1_client(ca))
                assert "NO_PROTOCOLS_AVAILABLE" not in str(failed.value)  # the server refused
        assert served_certificate(relay.port, ca) == der(issued)
    failures = logged(caplog, "tls-failed")
    assert len(failures) == 3
    assert all(r.levelno == logging.INFO for r in failures)  # one line, no traceback
    assert not [r for r in caplog.records if r.exc_info]
    assert count(home, Message) == 0


def _tls_1_1_client(ca: CertificateAuthority) -> ssl.SSLContext:
    """A client that offers TLS 1.1 at most (OpenSSL's security level 0 lets it try)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(ca.cert)
    context.set_ciphers("DEFAULT:@SECLEVEL=0")
    with warnings.catch_warnings():  # the versions themselves are deprecated names
        warnings.simplefilter("ignore", DeprecationWarning)
        context.minimum_version = ssl.TLSVersion.TLSv1
        context.maximum_version = ssl.TLSVersion.TLSv1_1
    return context


def test_the_session_starts_over_after_starttls(
    home: RelayHome, ca: CertificateAuthority, issued: Issued
) -> None:
    settings = with_tls(home, issued, require_tls=False)
    with RelayThread(settings, dispatch=False) as relay, smtp_client(relay.port) as client:
        client.ehlo("client.example")
        assert client.mail(SENDER)[0] == 250  # a transaction begun in plaintext ...
        assert client.starttls(context=ca.client_context())[0] == 220
        # ... is gone, and so is the EHLO: the client must say EHLO again (RFC 3207 4.2).
        assert client.docmd("MAIL", f"FROM:<{SENDER}>") == (503, b"5.5.1 Error: send HELO first")
        client.ehlo("client.example")
        assert client.rcpt(LIST) == (503, b"5.5.1 Error: need MAIL command")
        assert client.mail(SENDER)[0] == 250
        client.quit()


def test_starttls_without_a_certificate_is_454(home: RelayHome) -> None:
    with RelayThread(home.settings, dispatch=False) as relay, smtp_client(relay.port) as client:
        client.ehlo("client.example")
        assert not client.has_extn("starttls")
        assert client.docmd("STARTTLS") == (454, b"4.7.0 TLS not available")
        assert client.mail(SENDER)[0] == 250  # loopback, no TLS configured: plaintext
        client.quit()


# require_tls


def test_require_tls_refuses_mail_before_starttls_and_accepts_a_signed_post_after(
    home: RelayHome,
    keys: KeyFactory,
    ca: CertificateAuthority,
    issued: Issued,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    settings = with_tls(home, issued, require_tls=True)
    post = signed_post(home, keys)
    with RelayThread(settings, dispatch=False) as relay, smtp_client(relay.port) as client:
        client.ehlo("client.example")
        refused = (530, b"5.7.0 Must issue a STARTTLS command first")
        assert client.mail(SENDER) == refused
        assert client.docmd("RCPT", f"TO:<{LIST}>") == refused
        assert client.docmd("HELO", "client.example") == refused
        assert client.noop() == (250, b"2.0.0 OK")  # NOOP, EHLO, STARTTLS, QUIT are let by
        over_tls(client, ca.client_context())
        code, reply = post_over(client, post)
        client.quit()
    assert code == 250 and reply.startswith(b"2.0.0 Queued as ")
    assert count(home, Message) == 1
    assert count(home, Delivery) == 1  # one member: one copy queued
    (accepted,) = logged(caplog, "accepted")
    assert " tls=TLSv1." in accepted.getMessage()


def test_require_tls_false_with_a_certificate_takes_plaintext_posts(
    home: RelayHome,
    keys: KeyFactory,
    issued: Issued,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    settings = with_tls(home, issued, require_tls=False)
    post = signed_post(home, keys)
    with RelayThread(settings, dispatch=False) as relay, smtp_client(relay.port) as client:
        client.ehlo("client.example")
        assert client.has_extn("starttls")  # offered, not required
        code, reply = post_over(client, post)
        client.quit()
    assert code == 250 and reply.startswith(b"2.0.0 Queued as ")
    (accepted,) = logged(caplog, "accepted")
    assert accepted.getMessage().endswith(" tls=-")


# Pipelining: what the client sent behind STARTTLS, in plaintext, is never taken (RFC 3207
# 4.2; CVE-2011-0411 and CVE-2024-34083 were servers that took it as sent under TLS).


@pytest.mark.parametrize(
    "behind",
    [b"MAIL FROM:<x@y>\r\n", b"EHLO evil.example\r\nMAIL FROM:<x@y>\r\n"],
    ids=["mail", "ehlo-and-mail"],
)
def test_commands_pipelined_behind_starttls_are_discarded(
    home: RelayHome,
    ca: CertificateAuthority,
    issued: Issued,
    monkeypatch: pytest.MonkeyPatch,
    behind: bytes,
) -> None:
    settings = with_tls(home, issued, require_tls=False)  # a MAIL taken would be answered 250
    with RelayThread(settings, dispatch=False) as relay:
        assert relay.relay is not None
        handler = relay.relay.handler
        original = handler.handle_MAIL
        taken: list[str] = []

        async def spy(server: Any, session: Any, envelope: Any, address: str, options: Any) -> str:
            taken.append(address)
            return await original(server, session, envelope, address, options)

        monkeypatch.setattr(handler, "handle_MAIL", spy)
        raw = RawSession(relay.port)
        try:
            assert raw.reply().startswith(b"220 ")
            assert raw.send(b"EHLO client.example\r\n").startswith(b"250 ")
            # One write: STARTTLS and what follows it arrive in one packet.
            assert raw.send(b"STARTTLS\r\n" + behind) == b"220 2.0.0 Ready to start TLS\r\n"
            raw.start_tls(ca.client_context())
            # The first reply under TLS answers the first command sent under TLS.
            assert raw.send(b"NOOP\r\n") == b"250 2.0.0 OK\r\n"
            assert raw.send(f"RCPT TO:<{LIST}>\r\n".encode()).startswith(b"503 5.5.1 ")
            assert raw.send(b"EHLO client.example\r\n").startswith(b"250 ")
            assert raw.send(f"RCPT TO:<{LIST}>\r\n".encode()) == (
                b"503 5.5.1 Error: need MAIL command\r\n"
            )
            assert raw.send(f"MAIL FROM:<{SENDER}>\r\n".encode()).startswith(b"250 ")
            assert raw.send(b"QUIT\r\n").startswith(b"221 ")
        finally:
            raw.close()
    assert taken == [SENDER]  # the MAIL sent under TLS; never x@y


# Reload


def test_reload_serves_the_new_certificate_and_leaves_sessions_and_queue_alone(
    home: RelayHome,
    keys: KeyFactory,
    ca: CertificateAuthority,
    issued: Issued,
    sink: SmtpSink,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    settings = with_tls(home, issued, require_tls=True)
    posts = [signed_post(home, keys, f"CVE-2026-{n}") for n in (4241, 4242, 4243)]
    second_ca = CertificateAuthority.create(tmp_path / "ca2", name="Another CA")
    second = second_ca.issue("relay.test", tmp_path / "server2")
    with RelayThread(settings) as relay, smtp_client(relay.port) as before:
        assert relay.relay is not None
        over_tls(before, ca.client_context())
        assert post_over(before, posts[0])[0] == 250
        assert peer_certificate(before) == der(issued)

        install(home, second)  # over the same paths
        assert in_loop(relay, relay.relay.reload_tls) is True
        assert logged(caplog, "tls-reloaded")

        # A new session gets certificate 2, and only a client trusting its CA takes it.
        assert served_certificate(relay.port, second_ca) == der(second)
        with smtp_client(relay.port) as stale:
            stale.ehlo("client.example")
            with pytest.raises(ssl.SSLCertVerificationError):
                stale.starttls(context=ca.client_context())
        # The session opened before goes on, under certificate 1, and posts.
        assert before.noop() == (250, b"2.0.0 OK")
        assert peer_certificate(before) == der(issued)
        assert post_over(before, posts[1])[0] == 250
        with smtp_client(relay.port) as after:
            over_tls(after, second_ca.client_context())
            assert post_over(after, posts[2])[0] == 250
            after.quit()
        before.quit()
        # The queue went on through the reload: every copy of the three posts is sent.
        received = sink.wait_for(3, timeout=60)
        assert len(received) == 3
        assert count(home, Message) == 3

        # A broken certificate keeps certificate 2, and says why.
        (home.root / "tls" / "relay.pem").write_text("not a certificate\n")
        assert in_loop(relay, relay.relay.reload_tls) is False
        assert served_certificate(relay.port, second_ca) == der(second)
        # So does a key that belongs to another certificate.
        install(home, issued)
        (home.root / "tls" / "relay.key").write_bytes(second.key.read_bytes())
        assert in_loop(relay, relay.relay.reload_tls) is False
        assert served_certificate(relay.port, second_ca) == der(second)
    failed = logged(caplog, "tls-reload-failed")
    assert [r.levelno for r in failed] == [logging.ERROR, logging.ERROR]
    assert "relay.pem holds no PEM certificate" in failed[0].getMessage()
    assert "does not match the certificate" in failed[1].getMessage()


def test_reload_without_tls_configured_changes_nothing(home: RelayHome) -> None:
    with RelayThread(home.settings, dispatch=False) as relay:
        assert relay.relay is not None
        assert in_loop(relay, relay.relay.reload_tls) is False
        with smtp_client(relay.port) as client:
            assert client.noop()[0] == 250


class ServeProcess:
    """`relay serve` as a real process, its output in a log file."""

    def __init__(self, config: Path, log: Path) -> None:
        self.log = log
        with log.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "relay", "--config", str(config), "serve"],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=dict(os.environ, PYTHONUNBUFFERED="1"),
            )

    def wait_for(self, text: str, timeout: float = 60) -> str:
        """The first log line containing `text`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.log.read_text(errors="replace").splitlines():
                if text in line:
                    return line
            if self.proc.poll() is not None:
                raise AssertionError(f"relay serve exited:\n{self.log.read_text()}")
            time.sleep(0.05)
        raise AssertionError(f"no {text!r} in the log:\n{self.log.read_text()}")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(30)
        return self.proc.returncode


def test_sighup_makes_relay_serve_read_the_certificate_again(
    home: RelayHome, ca: CertificateAuthority, issued: Issued, tmp_path: Path
) -> None:
    with_tls(home, issued, require_tls=True)
    second_ca = CertificateAuthority.create(tmp_path / "ca2", name="Another CA")
    second = second_ca.issue("relay.test", tmp_path / "server2")
    serve = ServeProcess(home.config_path, tmp_path / "serve.log")
    try:
        listening = serve.wait_for("listening ")
        assert "tls=required" in listening
        port = int(listening.rsplit("port=", 1)[1].split()[0])
        with smtp_client(port) as before:
            over_tls(before, ca.client_context())
            assert peer_certificate(before) == der(issued)
            install(home, second)
            serve.proc.send_signal(signal.SIGHUP)
            serve.wait_for("tls-reloaded ")
            assert serve.proc.poll() is None  # SIGHUP does not stop it
            assert served_certificate(port, second_ca) == der(second)
            assert before.noop() == (250, b"2.0.0 OK")  # the open session goes on
            before.quit()
    finally:
        code = serve.stop()
    assert code == 0


# Configuration


def _serve_fails(config: Path) -> str:
    """`relay serve` on `config`: it must stop at once with exit code 1; its stderr."""
    result = subprocess.run(
        [sys.executable, "-m", "relay", "--config", str(config), "serve"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    return result.stderr


@pytest.mark.parametrize("line", ["require_tls = true", 'host = "0.0.0.0"', 'host = "::"'], ids=str)
def test_tls_required_without_a_certificate_is_a_config_error(home: RelayHome, line: str) -> None:
    text = home.config_path.read_text(encoding="utf-8").replace('host = "127.0.0.1"\n', "")
    home.config_path.write_text(text.replace("[smtp]\n", f"[smtp]\n{line}\n", 1))
    stderr = _serve_fails(home.config_path)
    assert "invalid configuration" in stderr
    assert "smtp: TLS is required (require_tls, or a host that is not loopback)" in stderr
    assert "set 'tls_cert' and 'tls_key'" in stderr


def test_an_unreadable_certificate_stops_relay_serve_at_once(
    home: RelayHome, issued: Issued
) -> None:
    with_tls(home, issued, require_tls=True)
    (home.root / "tls" / "relay.pem").write_text("-----BEGIN CERTIFICATE-----\nbroken\n")
    stderr = _serve_fails(home.config_path)
    cert = (home.root / "tls" / "relay.pem").resolve()
    assert f"error: smtp.tls_cert: {cert} holds no PEM certificate" in stderr


@pytest.mark.parametrize("case", ["missing-cert", "missing-key", "garbage-key", "mismatch"])
def test_server_context_names_the_file_it_cannot_use(
    ca: CertificateAuthority, tmp_path: Path, case: str
) -> None:
    one = ca.issue("relay.test", tmp_path / "one")
    other = ca.issue("relay.test", tmp_path / "other")
    cert, key = one.cert, one.key
    if case == "missing-cert":
        cert = tmp_path / "nowhere.pem"
        expected = f"smtp.tls_cert: cannot read {cert}: No such file or directory"
    elif case == "missing-key":
        key = tmp_path / "nowhere.key"
        expected = f"smtp.tls_key: cannot read {key}: No such file or directory"
    elif case == "garbage-key":
        key = tmp_path / "garbage.key"
        key.write_text("hello\n")
        expected = f"smtp.tls_key: {key} holds no PEM private key"
    else:
        key = other.key
        expected = (
            f"smtp.tls_key: the private key in {key} does not match the certificate in {cert}"
        )
    with pytest.raises(ConfigError) as raised:
        server_context(cert, key)
    assert str(raised.value).startswith(expected)


def test_a_key_with_a_passphrase_is_refused_without_a_prompt(
    issued: Issued, tmp_path: Path
) -> None:
    private = serialization.load_pem_private_key(issued.key.read_bytes(), password=None)
    locked = tmp_path / "locked.key"
    locked.write_bytes(
        private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    with pytest.raises(ConfigError, match="protected by a passphrase"):
        server_context(issued.cert, locked)


def test_the_server_context_is_tls_1_2_or_later_and_a_failed_reload_keeps_it(
    issued: Issued,
) -> None:
    context = server_context(issued.cert, issued.key)
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert context.verify_mode == ssl.CERT_NONE  # no client certificates asked for
    holder = ServerTLS(issued.cert, issued.key)
    kept = holder.context
    issued.cert.write_text("gone\n")
    assert holder.reload() is False
    assert holder.context is kept


@pytest.mark.parametrize(
    ("aiosmtpd", "sent"),
    [
        ("220 Ready to start TLS", "220 2.0.0 Ready to start TLS"),
        ("454 TLS not available", "454 4.7.0 TLS not available"),
        (
            "530 Must issue a STARTTLS command first",
            "530 5.7.0 Must issue a STARTTLS command first",
        ),
        ("501 Syntax: STARTTLS", "501 5.5.4 Syntax: STARTTLS"),
        (
            "554 Command refused due to lack of security",
            "554 5.7.0 Command refused due to lack of security",
        ),
        ("220 relay.test Embargo Relay", "220 relay.test Embargo Relay"),  # the greeting: none
    ],
)
def test_aiosmtpds_starttls_replies_carry_enhanced_status_codes(aiosmtpd: str, sent: str) -> None:
    assert with_status(aiosmtpd) == sent

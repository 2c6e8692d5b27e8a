"""TLS and SMTP AUTH on the way to the smarthost, with real certificates (a throwaway CA
from tests/support/certs.py) and the capturing sink on real sockets.

What must hold: a copy goes over a verified TLS session, or not at all (deferred with the
reason, never sent in plaintext instead); AUTH only over TLS (or to loopback); a password
that cannot be read, or can be read by others, stops the relay at start.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import ssl
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import select

from relay.cli.root import cli
from relay.core import config as relay_config
from relay.core.config import DeliverySettings
from relay.core.errors import ConfigError
from relay.model import Delivery, DeliveryStatus
from relay.outbound.transport import (
    Credentials,
    Outcome,
    SendResult,
    SmtpTransport,
    TlsMode,
    client_context,
    credentials_for,
    make_transport,
    needs_tls,
    transports_for,
)
from tests.support.certs import CertificateAuthority, Issued
from tests.support.keys import KeyFactory
from tests.support.mail import OpenedCopy, pgp_mime_signed, text_entity
from tests.support.relayhome import LIST, OffsetClock, RelayHome, RelayThread, distributors
from tests.support.relayhome import smtp_post as _post
from tests.support.smtpsink import SmtpSink

ALICE = "alice@example.net"
MEMBER = "security@distro0.example"
USER, PASSWORD = "relay@example.org", "correct horse battery staple"
SECRET = "The flaw lets any tenant read another tenant's secrets."


def message() -> bytes:
    # Lines starting with "." and "From " test SMTP transparency through TLS too.
    return (
        f"From: {LIST}\r\nTo: {ALICE}\r\nSubject: [...]\r\nMessage-ID: <tls.1@example.org>\r\n"
        "MIME-Version: 1.0\r\n\r\n.leading dot\r\n..two dots\r\nFrom the top\r\nlast line\r\n"
    ).encode()


@pytest.fixture
def ca(tmp_path: Path) -> CertificateAuthority:
    return CertificateAuthority.create(tmp_path / "ca")


@pytest.fixture
def server(ca: CertificateAuthority, tmp_path: Path) -> Issued:
    return ca.issue("smtp.relay.test", tmp_path / "server")  # also names 127.0.0.1


def send(
    port: int,
    *,
    host: str = "127.0.0.1",
    tls: TlsMode = "starttls",
    ca: CertificateAuthority | None = None,
    credentials: Credentials | None = None,
    data: bytes | None = None,
) -> SendResult:
    """One copy through a fresh SmtpTransport, as a delivery worker sends it."""

    async def main() -> SendResult:
        transport = SmtpTransport(
            host,
            port,
            timeout=10,
            local_hostname="relay.example.org",
            tls=tls,
            tls_context=client_context(ca.cert if ca else None) if tls != "none" else None,
            credentials=credentials,
        )
        try:
            return await transport.send(LIST, ALICE, data or message())
        finally:
            await transport.close()

    return asyncio.run(main())


def own_address() -> str | None:
    """An address of this machine that is not loopback, if it has one."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # no packet is sent: this only picks a route
        except OSError:
            return None
        address = str(probe.getsockname()[0])
    return None if address.startswith("127.") else address


# The transport against a real sink


def test_starttls_and_auth_deliver_the_copy_byte_exact(server: Issued, ca: CertificateAuthority):
    sink = SmtpSink(starttls=server.server_context(), require_tls=True, auth=(USER, PASSWORD))
    with sink:
        result = send(sink.port, ca=ca, credentials=Credentials(USER, PASSWORD))
        assert (result.outcome, result.code) == (Outcome.SENT, "250")
        (received,) = sink.wait_for(1)
    assert received.data == message()
    assert (received.mail_from, received.rcpt_tos) == (LIST, (ALICE,))
    assert (received.tls, received.auth_user) == (True, USER)
    assert sink.logins == [(USER, True)]


def test_one_verified_session_serves_successive_copies(server: Issued, ca: CertificateAuthority):
    """TLS and AUTH once per connection, not once per copy."""
    sink = SmtpSink(starttls=server.server_context(), require_tls=True, auth=(USER, PASSWORD))

    async def main() -> list[Outcome]:
        transport = SmtpTransport(
            "127.0.0.1",
            sink.port,
            timeout=10,
            local_hostname="relay.example.org",
            tls_context=client_context(ca.cert),
            credentials=Credentials(USER, PASSWORD),
        )
        try:
            return [(await transport.send(LIST, rcpt, message())).outcome for rcpt in (ALICE, LIST)]
        finally:
            await transport.close()

    with sink:
        assert asyncio.run(main()) == [Outcome.SENT, Outcome.SENT]
        received = sink.wait_for(2)
    assert [m.rcpt_tos for m in received] == [(ALICE,), (LIST,)]
    assert all(m.tls and m.auth_user == USER for m in received)
    assert (sink.connections, sink.logins) == (1, [(USER, True)])


def test_implicit_tls_delivers_to_a_smarthost_on_tls_from_the_first_byte(
    server: Issued, ca: CertificateAuthority
):
    with SmtpSink(implicit_tls=server.server_context(), auth=(USER, PASSWORD)) as sink:
        result = send(sink.port, tls="implicit", ca=ca, credentials=Credentials(USER, PASSWORD))
        assert result.outcome is Outcome.SENT
        (received,) = sink.wait_for(1)
    assert received.data == message()
    assert (received.tls, received.auth_user) == (True, USER)


def _stranger(folder: Path) -> Issued:
    return CertificateAuthority.create(folder / "other").issue("smtp.relay.test", folder / "x")


def _leaf_only(issued: Issued) -> ssl.SSLContext:
    """A server that sends its certificate without the chain to its CA."""
    leaf = issued.cert.with_suffix(".leaf.pem")
    pem = issued.cert.read_text(encoding="ascii")
    end = "-----END CERTIFICATE-----\n"
    leaf.write_text(pem[: pem.index(end) + len(end)], encoding="ascii")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(leaf, issued.key)
    return context


BAD_CERTIFICATES: dict[str, tuple[Callable[[CertificateAuthority, Path], ssl.SSLContext], str]] = {
    "untrusted CA": (
        lambda ca, folder: _stranger(folder).server_context(),
        "certificate verify failed: self-signed certificate in certificate chain",
    ),
    "untrusted CA, leaf only": (
        lambda ca, folder: _leaf_only(_stranger(folder)),
        "certificate verify failed: unable to get local issuer certificate",
    ),
    "wrong host name": (
        lambda ca, folder: ca.issue("elsewhere.test", folder / "w", addresses=()).server_context(),
        "certificate verify failed: IP address mismatch, certificate is not valid for '127.0.0.1'",
    ),
    "expired": (
        lambda ca, folder: ca.issue("smtp.relay.test", folder / "e", expired=True).server_context(),
        "certificate verify failed: certificate has expired",
    ),
}


@pytest.mark.parametrize("mode", ["starttls", "implicit"])
@pytest.mark.parametrize("problem", sorted(BAD_CERTIFICATES))
def test_a_certificate_that_fails_verification_gets_nothing_not_even_plaintext(
    problem: str, mode: TlsMode, ca: CertificateAuthority, tmp_path: Path
):
    """The sink offers STARTTLS but does not insist on it (a loopback front MTA could do
    that): after the failed handshake no MAIL may reach it, over any connection."""
    make, expected = BAD_CERTIFICATES[problem]
    context = make(ca, tmp_path)
    sink = SmtpSink(starttls=context) if mode == "starttls" else SmtpSink(implicit_tls=context)
    with sink:
        result = send(sink.port, tls=mode, ca=ca)
    assert (result.outcome, result.code) == (Outcome.TEMPORARY, "tls")
    assert expected in result.reason
    assert sink.mail_commands == 0
    assert sink.messages == []


def test_tls_is_required_except_to_a_loopback_smarthost_under_starttls():
    for host in ("127.0.0.1", "127.0.0.53", "::1", "[::1]", "localhost", "LOCALHOST"):
        assert not needs_tls(host, "starttls"), host
        assert needs_tls(host, "implicit"), host
    for host in ("smtp.example.net", "192.0.2.10", "2001:db8::25", "localhost.example.net"):
        assert needs_tls(host, "starttls"), host
        assert needs_tls(host, "implicit"), host
    for host in ("127.0.0.1", "smtp.example.net"):
        assert not needs_tls(host, "none"), host


def test_a_loopback_smarthost_without_starttls_gets_the_copy_in_plaintext():
    """A local front MTA (Postfix on 127.0.0.1) that offers no STARTTLS: allowed."""
    with SmtpSink() as sink:
        assert send(sink.port).outcome is Outcome.SENT
        (received,) = sink.wait_for(1)
    assert received.data == message()
    assert received.tls is False


def test_a_non_loopback_smarthost_without_starttls_gets_nothing():
    address = own_address()
    if address is None:
        pytest.skip("this machine has no address besides loopback")
    with SmtpSink(host=address) as sink:
        result = send(sink.port, host=address)
        assert (result.outcome, result.code, result.reason) == (
            Outcome.TEMPORARY,
            "tls",
            "smarthost offers no STARTTLS",
        )
        assert sink.mail_commands == 0
        # AUTH is never sent in plaintext beyond loopback, even by a transport told "none".
        refused = send(sink.port, host=address, tls="none", credentials=Credentials(USER, "x"))
        assert (refused.outcome, refused.code) == (Outcome.TEMPORARY, "auth")
        assert sink.logins == [] and sink.mail_commands == 0
        # Plaintext only when it was asked for.
        assert send(sink.port, host=address, tls="none").outcome is Outcome.SENT
        (received,) = sink.wait_for(1)
    assert received.tls is False


def test_tls_none_ignores_an_offered_starttls(server: Issued, ca: CertificateAuthority):
    with SmtpSink(starttls=server.server_context()) as sink:
        assert send(sink.port, tls="none").outcome is Outcome.SENT
        (received,) = sink.wait_for(1)
    assert received.tls is False


def test_auth_to_a_loopback_smarthost_without_tls_is_allowed():
    """As Postfix permits on its own loopback: the password never leaves the machine."""
    with SmtpSink(auth=(USER, PASSWORD)) as sink:
        assert send(sink.port, credentials=Credentials(USER, PASSWORD)).outcome is Outcome.SENT
        (received,) = sink.wait_for(1)
    assert (received.tls, received.auth_user) == (False, USER)


def test_a_wrong_password_is_temporary_with_the_535_reason(
    server: Issued, ca: CertificateAuthority
):
    sink = SmtpSink(starttls=server.server_context(), require_tls=True, auth=(USER, PASSWORD))
    with sink:
        result = send(sink.port, ca=ca, credentials=Credentials(USER, "wrong"))
    assert (result.outcome, result.code) == (Outcome.TEMPORARY, "535")
    assert result.reason.startswith("authentication refused: 535 5.7.8")
    assert sink.logins and all(login == (USER, False) for login in sink.logins)
    assert sink.mail_commands == 0
    assert "wrong" not in repr(Credentials(USER, "wrong"))


# The password and the CA file, from the configuration


def _settings(**delivery: object) -> DeliverySettings:
    return DeliverySettings.model_validate({"smarthost": "127.0.0.1:25", **delivery})


@pytest.mark.parametrize("source", ["file", "env"])
def test_the_password_comes_from_a_private_file_or_the_environment(
    source: str,
    tmp_path: Path,
    server: Issued,
    ca: CertificateAuthority,
    monkeypatch: pytest.MonkeyPatch,
):
    secret = tmp_path / "smarthost.password"
    secret.write_text(PASSWORD + "\n", encoding="utf-8")  # the first line, without its end
    secret.chmod(0o600)
    monkeypatch.setenv("RELAY_SMARTHOST_PASSWORD", PASSWORD)
    how = (
        {"auth_password_file": secret}
        if source == "file"
        else {"auth_password_env": "RELAY_SMARTHOST_PASSWORD"}
    )
    sink = SmtpSink(starttls=server.server_context(), require_tls=True, auth=(USER, PASSWORD))
    with sink:
        settings = _settings(
            smarthost=f"127.0.0.1:{sink.port}", ca_file=ca.cert, auth_user=USER, **how
        )
        assert credentials_for(settings) == Credentials(USER, PASSWORD)

        async def main() -> SendResult:
            transport = make_transport(settings, "relay.example.org")
            try:
                return await transport.send(LIST, ALICE, message())
            finally:
                await transport.close()

        assert asyncio.run(main()).outcome is Outcome.SENT
        (received,) = sink.wait_for(1)
    assert (received.tls, received.auth_user) == (True, USER)


def test_a_password_that_cannot_be_read_is_a_config_error_naming_the_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.delenv("RELAY_NO_SUCH_VARIABLE", raising=False)
    unset = _settings(auth_user=USER, auth_password_env="RELAY_NO_SUCH_VARIABLE")
    with pytest.raises(ConfigError, match=r"delivery\.auth_password_env: .*RELAY_NO_SUCH_VARIABLE"):
        transports_for(unset, "relay.example.org")
    missing = _settings(auth_user=USER, auth_password_file=tmp_path / "absent")
    with pytest.raises(ConfigError, match=r"delivery\.auth_password_file: cannot read .*absent"):
        transports_for(missing, "relay.example.org")
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    empty.chmod(0o600)
    with pytest.raises(ConfigError, match="is empty"):
        transports_for(_settings(auth_user=USER, auth_password_file=empty), "relay.example.org")
    bad_ca = tmp_path / "not-a-ca.pem"
    bad_ca.write_text("not a certificate\n", encoding="utf-8")
    for ca_file in (tmp_path / "absent.pem", bad_ca):
        with pytest.raises(ConfigError, match=r"delivery\.ca_file: cannot load"):
            transports_for(_settings(ca_file=ca_file), "relay.example.org")


def test_auth_with_tls_none_is_refused_when_the_config_is_loaded(tmp_path: Path, keys: KeyFactory):
    home = RelayHome(tmp_path, keys, smarthost="127.0.0.1:2525")
    with pytest.raises(ConfigError, match=r'SMTP AUTH is never sent in plaintext: .*tls = "none"'):
        _configure(home, 'tls = "none"\nauth_user = "relay"\nauth_password_env = "PW"')


def test_tls_none_is_warned_about_once_at_start(caplog: pytest.LogCaptureFixture):
    with caplog.at_level(logging.WARNING, logger="relay.transport"):
        transports_for(_settings(tls="none"), "relay.example.org")
        transports_for(_settings(), "relay.example.org")
    warnings = [r.getMessage() for r in caplog.records if r.name == "relay.transport"]
    assert len(warnings) == 1
    assert "copies go to the smarthost in plaintext (tls = none)" in warnings[0]


# Through a running relay


def _configure(home: RelayHome, lines: str) -> relay_config.Settings:
    """Add lines to the [delivery] section of the relay's config file and load it again."""
    text = home.config_path.read_text(encoding="utf-8")
    home.config_path.write_text(text.replace("[delivery]\n", f"[delivery]\n{lines}\n", 1))
    home.settings = relay_config.load(home.config_path)
    return home.settings


def _password_file(home: RelayHome, password: str = PASSWORD, mode: int = 0o600) -> None:
    path = home.root / "smarthost.password"
    path.write_text(password + "\n", encoding="utf-8")
    path.chmod(mode)


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
    code, reply = relay.run(_post(relay.port, data))
    assert code == 250, reply


def _delivery(home: RelayHome) -> Delivery:
    with home.db.transaction() as s:
        (delivery,) = s.execute(select(Delivery).where(Delivery.recipient == MEMBER)).scalars()
        return delivery


def _relay(home: RelayHome, *args: str) -> str:
    result = CliRunner().invoke(cli, ["--config", str(home.config_path), *args])
    assert result.exit_code == 0, result.output
    return result.output


def test_a_running_relay_delivers_over_starttls_with_auth(
    tmp_path: Path, keys: KeyFactory, server: Issued, ca: CertificateAuthority
):
    sink = SmtpSink(starttls=server.server_context(), require_tls=True, auth=(USER, PASSWORD))
    with sink:
        home = distributors(tmp_path, keys, sink.port, members=1)
        _password_file(home)
        _configure(
            home,
            f'ca_file = "{ca.cert}"\nauth_user = "{USER}"\n'
            'auth_password_file = "smarthost.password"',
        )
        assert home.settings.delivery.auth_password_file == home.root / "smarthost.password"
        with RelayThread(home.settings) as relay:
            _post_advisory(home, keys, relay)
            (received,) = sink.wait_for(1, timeout=60)
    assert received.rcpt_tos == (MEMBER,)
    assert (received.tls, received.auth_user) == (True, USER)
    opened = OpenedCopy(home.client(keys.make("distro0", MEMBER)), received.data)
    assert opened.decrypted and opened.signer == home.list_fpr
    assert SECRET in opened.text
    assert _delivery(home).status == DeliveryStatus.SENT


def test_an_untrusted_certificate_defers_the_copy_until_ca_file_names_the_ca(
    tmp_path: Path, keys: KeyFactory, server: Issued, ca: CertificateAuthority
):
    with SmtpSink(starttls=server.server_context()) as sink:
        home = distributors(tmp_path, keys, sink.port, members=1)
        clock = OffsetClock()
        # No ca_file: the system's CAs, which do not know this one.
        with RelayThread(home.settings, clock=clock, dispatch=False) as relay:
            _post_advisory(home, keys, relay)
            assert relay.run(relay.relay.dispatcher.run_once()) == 1
        deferred = _delivery(home)
        assert (deferred.status, deferred.last_code) == (DeliveryStatus.DEFERRED, "tls")
        reason = "certificate verify failed: self-signed certificate in certificate chain"
        assert reason in (deferred.last_reason or "")
        assert sink.mail_commands == 0 and sink.messages == []
        (shown,) = json.loads(_relay(home, "queue", "--json"))
        assert shown["status"] == "deferred" and reason in shown["last_reason"]

        _configure(home, f'ca_file = "{ca.cert}"')
        clock.offset = timedelta(minutes=2)  # past the first backoff (1m)
        with RelayThread(home.settings, clock=clock, dispatch=False) as relay:
            assert relay.run(relay.relay.dispatcher.run_once()) == 1
            (received,) = sink.wait_for(1, timeout=30)
    assert received.tls is True and received.rcpt_tos == (MEMBER,)
    assert _delivery(home).status == DeliveryStatus.SENT


def test_a_refused_login_defers_the_copy_with_the_535_reason(
    tmp_path: Path, keys: KeyFactory, server: Issued, ca: CertificateAuthority
):
    sink = SmtpSink(starttls=server.server_context(), require_tls=True, auth=(USER, PASSWORD))
    with sink:
        home = distributors(tmp_path, keys, sink.port, members=1)
        _password_file(home, "not the password")
        _configure(
            home,
            f'ca_file = "{ca.cert}"\nauth_user = "{USER}"\n'
            'auth_password_file = "smarthost.password"',
        )
        with RelayThread(home.settings, dispatch=False) as relay:
            _post_advisory(home, keys, relay)
            assert relay.run(relay.relay.dispatcher.run_once()) == 1
    deferred = _delivery(home)
    assert (deferred.status, deferred.last_code) == (DeliveryStatus.DEFERRED, "535")
    assert (deferred.last_reason or "").startswith("authentication refused: 535 5.7.8")
    assert sink.mail_commands == 0 and sink.messages == []
    assert "not the password" not in (deferred.last_reason or "")


def test_relay_serve_refuses_a_password_file_others_can_read(tmp_path: Path, keys: KeyFactory):
    home = RelayHome(tmp_path, keys, smarthost="127.0.0.1:2525")
    _password_file(home, mode=0o644)
    _configure(home, f'auth_user = "{USER}"\nauth_password_file = "smarthost.password"')
    result = CliRunner().invoke(cli, ["--config", str(home.config_path), "serve"])
    assert result.exit_code == 1, result.output
    path = home.root / "smarthost.password"
    assert (
        f"error: delivery.auth_password_file: {path} is open to group or others (mode 0644); "
        f"the password file must be private: chmod 600 {path}"
    ) in result.output
    assert "Traceback" not in result.output
    assert PASSWORD not in result.output


def test_an_explicit_check_of_the_client_context():
    """TLS 1.2 at least, the chain and the host name verified: Postfix's "verify" level."""
    context = client_context()
    assert context.minimum_version >= ssl.TLSVersion.TLSv1_2
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname

"""The relay behind a real Postfix, laid out as docs/postfix.md says (tests/support/postfix.py).

A signed post goes into Postfix's MX port over STARTTLS, Postfix hands it to the relay on
loopback, the relay hands its copies back to Postfix's loopback port for them, and Postfix
takes them out over verified TLS to a capturing sink as the next hop. Debian's Postfix,
run as a private instance in the test's folder; it needs root, as it does in CI.
"""

from __future__ import annotations

import email
import email.policy
import smtplib
import threading
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session
from sqlalchemy import select

from relay.core import verp
from relay.model import Delivery, DeliveryStatus
from tests.support import postfix as private_postfix
from tests.support.certs import CertificateAuthority
from tests.support.keys import KeyFactory, Keyring
from tests.support.mail import OpenedCopy, crlf, pgp_mime_signed, text_entity
from tests.support.postfix import PrivatePostfix, free_port
from tests.support.relayhome import LIST, RelayThread, distributors
from tests.support.smtpsink import Received, SmtpSink

_unavailable = private_postfix.available()
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(_unavailable is not None, reason=_unavailable or ""),
]

DOMAIN = LIST.rpartition("@")[2]
SINK_NAME = "smtp.sink.test"
BODY = (
    "EMBARGOED until 2026-12-08 16:00 UTC.\n\n"
    "A flaw in kube-proxy lets a pod on one node redirect traffic\n"
    "meant for another node's services (CVE-2026-99998).\n"
)
SUBJECT = "[EMBARGOED] CVE-2026-99998: kube-proxy traffic redirection"
# Queue runs, gpg and two SMTP hops each way: generous, and never a measurement.
WAIT = 120


@pytest.fixture
def ca(tmp_path: Path) -> CertificateAuthority:
    return CertificateAuthority.create(tmp_path / "ca")


@pytest.fixture
def tls_sink(ca: CertificateAuthority, tmp_path: Path):
    """The next hop of the copies: takes mail over STARTTLS only."""
    issued = ca.issue(SINK_NAME, tmp_path / "sink")
    with SmtpSink(starttls=issued.server_context(), require_tls=True) as running:
        yield running


def _post(port: int, ca: CertificateAuthority, sender: str, to: list[str], data: bytes) -> None:
    """Post as an SRC member's MTA would: STARTTLS, the certificate verified."""
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as smtp:
        smtp.ehlo("mail.example.net")
        smtp.starttls(context=ca.client_context())
        smtp.ehlo("mail.example.net")
        refused = smtp.sendmail(sender, to, data)
        assert refused == {}


def _one_line(header: object) -> str:
    return " ".join(str(header).split())


def test_signed_post_through_postfix_reaches_every_member_through_postfix(
    tmp_path: Path, keys: KeyFactory, ca: CertificateAuthority, tls_sink: SmtpSink
):
    mx_port, copies_port = free_port(), free_port()
    home = distributors(tmp_path, keys, copies_port, members=3)
    src = keys.make("src", "src@example.org")
    post = pgp_mime_signed(
        home.client(src),
        src.fingerprint,
        text_entity(BODY, subject=SUBJECT),
        subject=SUBJECT,
        sender=src.address,
        to=LIST,
    )
    mx = ca.issue(f"mx.{DOMAIN}", tmp_path / "mx")
    with (
        RelayThread(home.settings) as relay,
        PrivatePostfix(
            tmp_path / "postfix",
            mx_port,
            relay.port,
            tls_sink.port,
            DOMAIN,
            copies_port=copies_port,
            certificate=(mx.cert, mx.key),
            relayhost_ca=ca.cert,
            relayhost_name=SINK_NAME,
            message_size_limit=home.settings.smtp.max_message_size,
        ) as postfix,
    ):
        relay_port = relay.port
        _post(mx_port, ca, src.address, [LIST], post)
        try:
            received = tls_sink.wait_for(3, timeout=WAIT)
        except TimeoutError as exc:
            raise AssertionError(f"{exc}; Postfix's log:\n{postfix.log()}") from None
        log = postfix.log()

    # In over TLS, to the relay's port; out over TLS, the sink's certificate verified.
    assert "TLS connection established from" in log
    assert f"to=<{LIST}>, relay=127.0.0.1[127.0.0.1]:{relay_port}," in log
    assert f"Verified TLS connection established to 127.0.0.1[127.0.0.1]:{tls_sink.port}" in log

    members = [keys.make(f"distro{n}", f"security@distro{n}.example") for n in range(3)]
    by_rcpt: dict[tuple[str, ...], Received] = {m.rcpt_tos: m for m in received}
    assert set(by_rcpt) == {(m.address,) for m in members}
    with home.db.transaction() as s:
        deliveries = {d.recipient: d for d in s.execute(select(Delivery)).scalars()}
        assert {d.status for d in deliveries.values()} == {DeliveryStatus.SENT}
        senders = {r: verp.bounce_address(LIST, d.bounce_token) for r, d in deliveries.items()}
    for member in members:
        copy = by_rcpt[(member.address,)]
        assert copy.tls
        assert copy.mail_from == senders[member.address]
        outer = email.message_from_bytes(copy.data, policy=email.policy.default)
        # Postfix's own hop, the last one before the sink: first from the top.
        hops = [_one_line(h) for h in outer.get_all("Received", [])]
        assert f"by {postfix.hostname} (Postfix)" in hops[0]
        assert f"for <{member.address}>" in hops[0]
        assert outer["To"] == LIST
        assert outer.get_content_type() == "multipart/encrypted"
        assert b"kube-proxy" not in copy.data
        # The bytes the sink got decrypt and carry the list's valid signature.
        opened = OpenedCopy(home.client(member), copy.data)
        assert opened.decrypted
        assert opened.signer == home.list_fpr
        assert opened.root["Subject"] == SUBJECT
        assert "redirect traffic" in opened.text


class _Plain7BitServer:
    """An SMTP server that does not announce 8BITMIME, as an old MTA would: the hop where
    a converting MTA turns 8bit into quoted-printable and so breaks a signature. It keeps
    each message's exact bytes."""

    def __init__(self) -> None:
        self.messages: list[Received] = []
        self._changed = threading.Condition()
        self.controller = Controller(self, hostname="127.0.0.1", port=free_port())

    @property
    def port(self) -> int:
        return int(self.controller.port)

    async def handle_EHLO(
        self, server: SMTP, session: Session, envelope: Envelope, hostname: str, responses: list
    ) -> list[str]:
        session.host_name = hostname
        return [line for line in responses if line != "250-8BITMIME"]

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        with self._changed:
            self.messages.append(
                Received(
                    str(envelope.mail_from),
                    tuple(envelope.rcpt_tos),
                    envelope.original_content or b"",
                )
            )
            self._changed.notify_all()
        return "250 2.0.0 OK"

    def wait_for(self, count: int, timeout: float) -> list[Received]:
        with self._changed:
            if not self._changed.wait_for(lambda: len(self.messages) >= count, timeout):
                raise TimeoutError(f"{len(self.messages)} of {count} messages arrived")
            return list(self.messages)


def _signed_8bit(keys: KeyFactory, client: Path) -> bytes:
    """A PGP/MIME post whose signed part is 8bit UTF-8: what a conversion would break."""
    src = keys.make("src", "src@example.org")
    entity = crlf(
        (
            'Content-Type: text/plain; charset="utf-8"\n'
            "Content-Transfer-Encoding: 8bit\n\n"
            "Embargo bis 8. Dezember, 16:00 UTC. Größe: ≥ 2 GiB; Grüße.\n"
        ).encode()
    )
    return pgp_mime_signed(
        Keyring(client, src),
        src.fingerprint,
        entity,
        subject="Advisory",
        sender=src.address,
        to=LIST,
    )


def test_postfix_takes_mail_for_the_list_only_and_hands_it_on_unchanged(
    tmp_path: Path, keys: KeyFactory, sink: SmtpSink
):
    """The MX port's recipient checks, and exactly what reaches the relay's port (here a
    capturing server in its place, to see every byte, and one without 8BITMIME)."""
    mx_port, copies_port = free_port(), free_port()
    relay_side = _Plain7BitServer()
    relay_side.controller.start()
    try:
        with PrivatePostfix(
            tmp_path / "postfix",
            mx_port,
            relay_side.port,
            sink.port,
            DOMAIN,
            copies_port=copies_port,
        ) as postfix:
            with smtplib.SMTP("127.0.0.1", mx_port, timeout=30) as smtp:
                smtp.ehlo("mail.example.net")
                smtp.mail("src@example.org")
                replies = {
                    rcpt: smtp.rcpt(rcpt)
                    for rcpt in (
                        "someone@elsewhere.example",  # relaying for a stranger
                        f"nobody@{DOMAIN}",  # the list's domain, not the list
                        LIST,
                        f"distributors+bounce-{'a' * 16}@{DOMAIN}",  # a copy's VERP address
                    )
                }
                smtp.rset()
            post = _signed_8bit(keys, tmp_path / "client")
            bounce_to = f"distributors+bounce-{'b' * 16}@{DOMAIN}"
            with smtplib.SMTP("127.0.0.1", mx_port, timeout=30) as smtp:
                smtp.sendmail("src@example.org", [LIST], post, mail_options=["BODY=8BITMIME"])
                smtp.sendmail("", [bounce_to], crlf(b"Subject: bounce\n\nundeliverable\n"))
            try:
                arrived = relay_side.wait_for(2, timeout=WAIT)
            except TimeoutError as exc:
                raise AssertionError(f"{exc}; Postfix's log:\n{postfix.log()}") from None
    finally:
        relay_side.controller.stop()

    code, text = replies["someone@elsewhere.example"]
    assert (code, text.split()[0]) == (554, b"5.7.1") and b"Relay access denied" in text
    code, text = replies[f"nobody@{DOMAIN}"]
    assert (code, text.split()[0]) == (550, b"5.1.1")
    assert replies[LIST][0] == 250
    assert replies[f"distributors+bounce-{'a' * 16}@{DOMAIN}"][0] == 250

    by_rcpt = {m.rcpt_tos: m for m in arrived}
    assert set(by_rcpt) == {(LIST,), (bounce_to,)}
    handed = by_rcpt[(LIST,)]
    assert handed.mail_from == "src@example.org"
    # Postfix puts its Received on top and changes nothing else, byte for byte.
    assert handed.data.endswith(post)
    added = handed.data[: -len(post)]
    first, *folded = added.removesuffix(b"\r\n").split(b"\r\n")
    assert first.startswith(b"Received: from ")
    assert all(line[:1] in (b" ", b"\t") for line in folded)
    assert f"by {postfix.hostname} (Postfix)".encode() in added
    assert by_rcpt[(bounce_to,)].mail_from == "<>"
    assert sink.messages == []

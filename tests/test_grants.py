"""Need-to-know grants (`X-Share`, `relay share`): the person gets only the terms until they
accept by a signed reply, then the advisory's posts; nothing more once revoked. Real gpg,
real SMTP.
"""

from __future__ import annotations

import json
import secrets
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from click.testing import CliRunner
from sqlalchemy import select

from relay.cli.root import cli
from relay.model import AuditEvent, Delivery, Grant, GrantState, Incident, Message
from tests.support import backends
from tests.support.keys import KeyFactory
from tests.support.mail import OpenedCopy, crlf, pgp_mime_signed, text_entity
from tests.support.relayhome import LIST, RelayHome, RelayThread, distributors
from tests.support.relayhome import smtp_post as _post
from tests.support.smtpsink import Received, SmtpSink

if TYPE_CHECKING:  # imported by name, pytest would try to collect it as a test class
    from tests.support.keys import TestKey

ADVISORY = "CVE-2026-7777"
TITLE = "kubelet token exposure"
LIFT = (datetime.now(UTC) + timedelta(days=9)).replace(microsecond=0)


def _home(tmp_path: Path, keys: KeyFactory, sink: SmtpSink) -> RelayHome:
    return distributors(tmp_path, keys, sink.port)


def _member(keys: KeyFactory, n: int) -> TestKey:
    return keys.make(f"distro{n}", f"security@distro{n}.example")


def _signed(home: RelayHome, key: TestKey, entity: bytes, subject: str, **headers: str) -> bytes:
    data = pgp_mime_signed(
        home.client(key), key.fingerprint, entity, subject=subject, sender=key.address, to=LIST
    )
    return "".join(f"{k}: {v}\r\n" for k, v in headers.items()).encode() + data


def _with_key(body: str, public: bytes) -> bytes:
    """A post's text with the person's public key attached, as a mail client attaches it."""
    boundary = "mix-" + secrets.token_hex(6)
    return (
        crlf(f'Content-Type: multipart/mixed; boundary="{boundary}"\n\n--{boundary}\n'.encode())
        + text_entity(body)
        + crlf(
            f"\n--{boundary}\nContent-Type: application/pgp-keys\n"
            'Content-Disposition: attachment; filename="key.asc"\n\n'.encode()
        )
        + crlf(public)
        + f"\r\n--{boundary}--\r\n".encode()
    )


def _src_post(home: RelayHome, keys: KeyFactory, relay: RelayThread, text: str) -> None:
    body = f"X-Advisory: {ADVISORY}\nX-Embargo-Until: {LIFT.isoformat()}\n\n{text}\n"
    entity = text_entity(body)
    code, reply = relay.run(
        _post(
            relay.port, _signed(home, keys.make("src"), entity, f"[EMBARGOED] {ADVISORY}: {TITLE}")
        )
    )
    assert code == 250, reply


def _send(relay: RelayThread, home: RelayHome, key: TestKey, body: str, **headers: str):
    data = _signed(home, key, text_entity(body), headers.pop("subject", "Re: terms"), **headers)
    return relay.run(_post(relay.port, data, sender=key.address))


def _to(messages: list[Received], address: str) -> list[Received]:
    return [m for m in messages if m.rcpt_tos == (address,)]


def _grant(home: RelayHome, address: str) -> Grant:
    with home.db.transaction() as s:
        grant = s.execute(select(Grant).where(Grant.address == address)).scalars().one()
        s.expunge(grant)
        return grant


def _copies_for(home: RelayHome, address: str) -> list[str]:
    """Ids of the messages queued for `address`, in order."""
    with home.db.transaction() as s:
        return list(
            s.execute(
                select(Delivery.message_id)
                .where(Delivery.recipient == address)
                .order_by(Delivery.id)
            ).scalars()
        )


def test_x_share_terms_first_then_posts_after_acceptance_and_nothing_after_revocation(
    tmp_path: Path, keys: KeyFactory, sink: SmtpSink
):
    home = _home(tmp_path, keys, sink)
    distro0 = _member(keys, 0)
    dev = keys.make("dev0", "dev@distro0.example")
    runner = CliRunner()
    config = ["--config", str(home.config_path)]
    with RelayThread(home.settings) as relay:
        _src_post(home, keys, relay, "The flaw: FIRST-SECRET-DETAIL.")
        sink.wait_for(2, timeout=60)

        share = _with_key(
            f"X-Advisory: {ADVISORY}\nX-Share: {dev.address}\n\nOur kubelet dev.\n", dev.public
        )
        code, reply = relay.run(
            _post(relay.port, _signed(home, distro0, share, "share"), sender=distro0.address)
        )
        assert code == 250, reply
        (terms,) = _to(sink.wait_for(3, timeout=60), dev.address)  # the members got nothing new
        grant = _grant(home, dev.address)
        assert grant.state == GrantState.PENDING and grant.fingerprints == [dev.fingerprint]
        opened = OpenedCopy(home.client(dev), terms.data)
        assert opened.decrypted and opened.signer == home.list_fpr
        assert f"X-Accept: {grant.token}" in opened.text
        assert "need-to-know" in opened.text and "security@example.org" in opened.text
        seen = opened.text + str(opened.root["Subject"]) + terms.data.decode(errors="replace")
        assert "FIRST-SECRET-DETAIL" not in seen and TITLE not in seen
        assert ADVISORY in opened.text

        # Before acceptance: a new post of the advisory goes to the members only.
        _src_post(home, keys, relay, "More: SECOND-SECRET-DETAIL.")
        received = sink.wait_for(5, timeout=60)
        assert _to(received, dev.address) == [terms]
        assert _copies_for(home, dev.address) == [grant.terms_message_id]

        # The grant's key may accept, and do nothing else; a wrong token changes nothing.
        code, reply = _send(relay, home, dev, f"X-Accept: {'0' * 32}\n\nI agree.\n")
        assert (code, reply[:5]) == (550, "5.7.1"), reply
        code, reply = _send(relay, home, dev, f"X-Advisory: {ADVISORY}\n\nA question.\n")
        assert (code, reply[:5]) == (550, "5.7.1"), reply
        code, reply = _send(relay, home, _member(keys, 1), f"X-Accept: {grant.token}\n\nMe.\n")
        assert (code, reply[:5]) == (550, "5.7.1"), reply
        assert _grant(home, dev.address).state == GrantState.PENDING

        code, reply = _send(relay, home, dev, f"X-Accept: {grant.token}\n\nI agree.\n")
        assert code == 250, reply
        assert _grant(home, dev.address).state == GrantState.ACCEPTED
        backlog = _to(sink.wait_for(7, timeout=60), dev.address)[1:]
        texts = [OpenedCopy(home.client(dev), m.data).text for m in backlog]
        found = {("FIRST-SECRET-DETAIL" in t, "SECOND-SECRET-DETAIL" in t) for t in texts}
        assert len(texts) == 2 and found == {(True, False), (False, True)}

        # While the grant stands, later posts reach the person with the list.
        _src_post(home, keys, relay, "Patch: THIRD-SECRET-DETAIL.")
        third = _to(sink.wait_for(10, timeout=60), dev.address)[3:]
        (copy,) = third
        opened = OpenedCopy(home.client(dev), copy.data)
        assert opened.signer == home.list_fpr and "THIRD-SECRET-DETAIL" in opened.text

        revoked = runner.invoke(
            cli, [*config, "share", "revoke", str(grant.id), "--reason", "left the team"]
        )
        assert revoked.exit_code == 0, revoked.output
        _src_post(home, keys, relay, "Update: FOURTH-SECRET-DETAIL.")
        received = sink.wait_for(12, timeout=60)
        assert len(_copies_for(home, dev.address)) == 4  # terms and three posts, no fourth
        listed = runner.invoke(cli, [*config, "share", "list", "--json"])
    assert len(_to(received, dev.address)) == 4
    assert listed.exit_code == 0, listed.output
    (row,) = json.loads(listed.stdout)
    assert (row["id"], row["state"], row["member"]) == (grant.id, "revoked", distro0.address)
    assert row["reason"] == "left the team" and "token" not in row
    assert grant.token not in listed.output
    with home.db.transaction() as s:
        actions = set(s.execute(select(AuditEvent.action)).scalars())
    assert {"grant.created", "grant.accepted", "grant.revoked"} <= actions


def test_revoking_cancels_copies_not_yet_sent(tmp_path: Path, keys: KeyFactory, sink: SmtpSink):
    home = _home(tmp_path, keys, sink)
    dev = keys.make("dev0", "dev@distro0.example")
    runner = CliRunner()
    config = ["--config", str(home.config_path)]
    with RelayThread(home.settings, dispatch=False) as relay:
        _src_post(home, keys, relay, "The flaw.")
        args = ["share", ADVISORY, dev.address, "--key", str(dev.public_file)]
        shared = runner.invoke(cli, [*config, *args, "--for", "security@distro0.example"])
        assert shared.exit_code == 0, shared.output
        grant = _grant(home, dev.address)
        assert _send(relay, home, dev, f"X-Accept: {grant.token}\n")[0] == 250
        revoked = runner.invoke(cli, [*config, "share", "revoke", str(grant.id)])
        assert revoked.exit_code == 0 and "2 unsent copies cancelled" in revoked.output
        again = runner.invoke(cli, [*config, "share", "revoke", str(grant.id)])
        assert again.exit_code == 1 and "already revoked" in again.output
    with home.db.transaction() as s:
        rows = s.execute(
            select(Delivery.status, Delivery.last_code).where(Delivery.recipient == dev.address)
        ).all()
    assert rows == [("failed", "cancelled")] * 2  # the terms, and the backlog's one post


def test_admin_share_and_external_copies_to_grant_holders(
    tmp_path: Path, keys: KeyFactory, sink: SmtpSink
):
    home = _home(tmp_path, keys, sink)
    distro1 = _member(keys, 1)
    dev = keys.make("dev1", "dev@distro1.example")
    ops = keys.make("ops1", "ops@distro1.example")
    runner = CliRunner()
    config = ["--config", str(home.config_path)]

    def share(person: TestKey, member: str = distro1.address, key: Path | None = None):
        key_file = str(key or person.public_file)
        args = ["share", ADVISORY, person.address, "--key", key_file, "--for", member]
        return runner.invoke(cli, [*config, *args])

    with RelayThread(home.settings) as relay:
        _src_post(home, keys, relay, "The flaw.")
        sink.wait_for(2, timeout=60)
        for person in (dev, ops):
            result = share(person)
            assert result.exit_code == 0, result.output
            assert "waiting for their signed acceptance" in result.output
        relay.relay.dispatcher.wake()
        for person in (dev, ops):
            (terms,) = _to(sink.wait_for(4, timeout=60), person.address)
            assert (
                _grant(home, person.address).token
                in OpenedCopy(home.client(person), terms.data).text
            )

        # Refused: a second live grant, someone outside the member's team, a weak key.
        again = share(dev)
        assert again.exit_code == 1 and "already holds a pending grant" in again.output
        outsider = keys.make("boss", "boss@corp.example")
        assert "not in the team" in share(outsider).output
        weak = keys.make("weak1", "weak@distro1.example", kind="rsa1024")
        refused = share(weak)
        # Refused by both backends; Sequoia's policy rejects RSA-1024 before its size is
        # read, so it says there is no usable subkey (a difference the README lists).
        why = "too weak" if backends.BACKEND == backends.GNUPG else "no usable encryption subkey"
        assert refused.exit_code == 1 and why in refused.output

        token = _grant(home, dev.address).token
        assert _send(relay, home, dev, f"X-Accept: {token}\n\nAgreed.\n")[0] == 250
        (post,) = _to(sink.wait_for(5, timeout=60), dev.address)[1:]  # the post so far
        assert "The flaw." in OpenedCopy(home.client(dev), post.data).text

        # A member's post copied to an accepted colleague raises no incident; to a pending one,
        # it does (the person has not agreed to the terms yet).
        body = f"X-Advisory: {ADVISORY}\n\nWe are testing the patch.\n"
        code, reply = _send(relay, home, distro1, body, Cc=dev.address, subject="testing")
        assert code == 250, reply
        with home.db.transaction() as s:
            assert s.execute(select(Incident)).scalars().all() == []
        body = f"X-Advisory: {ADVISORY}\n\nWe are testing the patch, second run.\n"
        code, reply = _send(relay, home, distro1, body, Cc=ops.address, subject="testing")
        assert code == 250, reply
        listed = runner.invoke(cli, [*config, "share", "list", "--advisory", ADVISORY, "--json"])
    with home.db.transaction() as s:
        (incident,) = s.execute(select(Incident)).scalars().all()
        posts = s.execute(
            select(Message.id).where(Message.signer_fingerprint == distro1.fingerprint)
        )
        assert len(posts.all()) == 2
    assert incident.recipients == [ops.address] and incident.kind == "external-cc"
    states = {(r["address"], r["state"]) for r in json.loads(listed.stdout)}
    assert states == {(dev.address, "accepted"), (ops.address, "pending")}


def test_x_share_without_a_key_or_outside_the_team_is_refused(
    tmp_path: Path, keys: KeyFactory, sink: SmtpSink
):
    home = _home(tmp_path, keys, sink)
    distro0 = _member(keys, 0)
    with RelayThread(home.settings, dispatch=False) as relay:
        _src_post(home, keys, relay, "The flaw.")
        code, reply = _send(
            relay, home, distro0, f"X-Advisory: {ADVISORY}\nX-Share: dev@distro0.example\n\nHi.\n"
        )
        assert (code, reply[:5]) == (550, "5.6.0") and "public key" in reply
        boss = keys.make("boss", "boss@corp.example")
        share = _with_key(f"X-Advisory: {ADVISORY}\nX-Share: {boss.address}\n\nHi.\n", boss.public)
        code, reply = relay.run(
            _post(relay.port, _signed(home, distro0, share, "share"), sender=distro0.address)
        )
        assert (code, reply[:5]) == (550, "5.7.1") and "not in the team" in reply
        # The refusal names the advisory and its lift, as every block does.
        assert f"{boss.address}> may not receive {ADVISORY} before" in reply and "UTC" in reply
    with home.db.transaction() as s:
        assert s.execute(select(Grant)).scalars().all() == []
        # Nothing went to boss@ ... but the attempt is a leak, reported against the member.
        (report,) = s.execute(select(Delivery).where(Delivery.member_id.is_(None))).scalars()
        assert report.recipient == "security@example.org"
        (incident,) = s.execute(select(Incident)).scalars()
        assert (incident.kind, incident.recipients) == ("forward-blocked", [boss.address])
        assert incident.member.address == distro0.address
        assert "outside its team" in incident.note


def test_grant_holders_hear_of_the_lift(tmp_path: Path, keys: KeyFactory, sink: SmtpSink):

    home = _home(tmp_path, keys, sink)
    distro0 = _member(keys, 0)
    dev = keys.make("dev0", "dev@distro0.example")
    with RelayThread(home.settings) as relay:
        _src_post(home, keys, relay, "The flaw.")
        sink.wait_for(2, timeout=60)
        share = _with_key(
            f"X-Advisory: {ADVISORY}\nX-Share: {dev.address}\n\nOur dev.\n", dev.public
        )
        assert (
            relay.run(
                _post(relay.port, _signed(home, distro0, share, "share"), sender=distro0.address)
            )[0]
            == 250
        )
        sink.wait_for(3, timeout=60)
        token = _grant(home, dev.address).token
        assert _send(relay, home, dev, f"X-Accept: {token}\n\nI agree.\n")[0] == 250
        sink.wait_for(4, timeout=60)  # the post so far
        relay.lift(ADVISORY)
        received = sink.wait_for(7, timeout=60)  # the lift notice: two members and dev
    notice = _to(received, dev.address)[-1]
    opened = OpenedCopy(home.client(dev), notice.data)
    assert opened.signer == home.list_fpr and "embargo" in opened.text.lower()
    assert ADVISORY in opened.text

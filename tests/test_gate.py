"""The gate: every copy the relay itself sends to someone who is not a member or a sender is
judged by the forwarding rules first, for its own advisory and for every embargoed advisory
its text quotes. Real gpg, real SMTP over 127.0.0.1, real SQLite.
"""

from __future__ import annotations

import textwrap
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from click.testing import CliRunner
from sqlalchemy import select

from relay.cli.root import cli
from relay.model import AuditEvent, Delivery, DeliveryStatus, Grant, Incident
from relay.store import delivery_queue, notices
from tests.support.keys import KeyFactory
from tests.support.mail import OpenedCopy, crlf, pgp_mime_signed, text_entity
from tests.support.relayhome import LIST, RelayHome, RelayThread, distributors
from tests.support.relayhome import smtp_post as _post
from tests.support.smtpsink import Received, SmtpSink

if TYPE_CHECKING:
    from tests.support.keys import TestKey

ROOT = Path(__file__).resolve().parent.parent
ADVISORY_TEXT = ROOT / "tests" / "data" / "matcher" / "k8s-CVE-2024-10220-oss-security-email.txt"
BODY = ADVISORY_TEXT.read_text().split("\n\n", 1)[1]
QUOTED = "CVE-2026-9999"  # embargoed; its text is BODY
SHARED = "CVE-2026-7777"  # embargoed; shared with a colleague of distro0
LIFT = (datetime.now(UTC) + timedelta(days=9)).replace(microsecond=0)
CONTACT = "security@example.org"


def _signed(home: RelayHome, key: TestKey, body: str, subject: str) -> bytes:
    return pgp_mime_signed(
        home.client(key),
        key.fingerprint,
        text_entity(body),
        subject=subject,
        sender=key.address,
        to=LIST,
    )


def _src(home: RelayHome, keys: KeyFactory, relay: RelayThread, advisory: str, text: str) -> None:
    body = f"X-Advisory: {advisory}\nX-Embargo-Until: {LIFT.isoformat()}\n\n{text}\n"
    code, reply = relay.run(
        _post(relay.port, _signed(home, keys.make("src"), body, f"[EMBARGOED] {advisory}"))
    )
    assert code == 250, reply


def _excerpt() -> str:
    """Part of QUOTED's text as a reply quotes it: re-wrapped and '> '-prefixed."""
    words = " ".join(BODY.split("Am I vulnerable?")[0].split("\n\n", 1)[1].split())
    return "\n".join("> " + line for line in textwrap.wrap(words, 40))


def _to(messages: list[Received], address: str) -> list[Received]:
    return [m for m in messages if m.rcpt_tos == (address,)]


def _delivery(home: RelayHome, recipient: str, message_id: str | None = None) -> Delivery:
    with home.db.transaction() as s:
        query = select(Delivery).where(Delivery.recipient == recipient)
        if message_id is not None:
            query = query.where(Delivery.message_id == message_id)
        found = s.execute(query.order_by(Delivery.id.desc()).limit(1)).scalar_one()
        s.expunge(found)
        return found


@pytest.mark.parametrize(("outsiders", "kind"), [("block", "blocked"), ("flag", "flagged")])
def test_a_grant_for_one_advisory_opens_no_other_until_its_lift(
    outsiders: str, kind: str, tmp_path: Path, keys: KeyFactory, sink: SmtpSink
):
    home = distributors(tmp_path, keys, sink.port, extra=_policy(tmp_path, outsiders))
    contact = keys.make("contact", CONTACT)
    home.add_sender(contact)
    distro0 = keys.make("distro0", "security@distro0.example")
    dev = keys.make("dev0", "dev@distro0.example")
    config = ["--config", str(home.config_path)]
    with RelayThread(home.settings) as relay:
        _src(home, keys, relay, QUOTED, BODY)
        _src(home, keys, relay, SHARED, "The flaw.")
        share = ["share", SHARED, dev.address, "--key", str(dev.public_file)]
        shared = CliRunner().invoke(cli, [*config, *share, "--for", distro0.address])
        assert shared.exit_code == 0, shared.output
        with home.db.transaction() as s:
            token = s.execute(select(Grant.token)).scalar_one()
        accept = _signed(home, dev, f"X-Accept: {token}\n\nAgreed.\n", "Re: terms")
        assert relay.run(_post(relay.port, accept, sender=dev.address))[0] == 250
        # 2 + 2 posts to the members, the terms and the backlog's one post to dev.
        before = sink.wait_for(6, timeout=60)
        assert len(_to(before, dev.address)) == 2

        # distro0 writes about SHARED, quoting QUOTED: its colleague may read only SHARED.
        reply = f"X-Advisory: {SHARED}\n\nLooks like the other one:\n\n{_excerpt()}\n\nThanks.\n"
        code, why = relay.run(
            _post(relay.port, _signed(home, distro0, reply, "Re: both"), sender=distro0.address)
        )
        assert code == 250, why
        # The members' two copies, the leak report, and under block the poster's notice.
        told_poster = outsiders == "block"
        received = sink.wait_for(9 + told_poster, timeout=60)
        assert len(_to(received, dev.address)) == 2  # nothing new for the colleague
        held = _delivery(home, dev.address)
        assert (held.status, held.last_code, held.held_for) == ("held", "embargo", QUOTED)

        with home.db.transaction() as s:
            (incident,) = s.execute(select(Incident)).scalars().all()
            assert (incident.advisory_id, incident.kind) == (QUOTED, f"forward-{kind}")
            assert incident.recipients == [dev.address]
            assert incident.member.address == distro0.address
            assert incident.message_id == held.message_id
            assert incident.matched["excerpts"] and "held until the lift" in incident.note
        (report,) = [
            m
            for m in _to(received, CONTACT)
            if f"Leak report: {QUOTED}"
            in str(OpenedCopy(home.client(contact), m.data).root["Subject"])
        ]
        told = [
            OpenedCopy(home.client(distro0), m.data).text for m in _to(received, distro0.address)
        ]
        notified = any(f"did not send it to {dev.address}" in t and QUOTED in t for t in told)
        assert notified == told_poster

        # At QUOTED's lift the held copy is asked about again, and goes.
        relay.lift(QUOTED)
        # + the lift notices to the two members, and the released copy
        after = sink.wait_for(12 + told_poster, timeout=60)
        late = _to(after, dev.address)[2:]
        assert len(late) == 1
        opened = OpenedCopy(home.client(dev), late[0].data)
        assert opened.signer == home.list_fpr and "Looks like the other one" in opened.text
    assert _delivery(home, dev.address, held.message_id).status == DeliveryStatus.SENT
    assert report.rcpt_tos == (CONTACT,)


def test_a_public_text_that_quotes_an_embargoed_advisory_waits_for_that_lift(
    tmp_path: Path, keys: KeyFactory, sink: SmtpSink
):
    public = "announce@lists.example"
    extra = f'\n[embargo]\npublic_addresses = ["{public}"]\n'
    home = distributors(tmp_path, keys, sink.port, extra=extra)
    contact = keys.make("contact", CONTACT)
    home.add_sender(contact)
    text_file = tmp_path / "public.txt"
    text_file.write_text(f"{SHARED} is fixed in v1.31.2. Related:\n\n{_excerpt()}\n")
    with RelayThread(home.settings) as relay:
        _src(home, keys, relay, QUOTED, BODY)
        _src(home, keys, relay, SHARED, "The flaw.")
        result = CliRunner().invoke(
            cli,
            ["--config", str(home.config_path), "advisory", "public-text", SHARED, str(text_file)],
        )
        assert result.exit_code == 0, result.output
        relay.lift(SHARED)
        # 4 posts, 2 lift notices, the leak report: nothing for the public address.
        received = sink.wait_for(7, timeout=60)
        assert _to(received, public) == []
        held = _delivery(home, public)
        assert (held.status, held.last_code, held.held_for) == ("held", "embargo", QUOTED)
        with home.db.transaction() as s:
            (incident,) = s.execute(select(Incident)).scalars().all()
            assert (incident.advisory_id, incident.kind) == (QUOTED, "forward-blocked")
            assert incident.recipients == [public] and incident.member is None

        relay.lift(QUOTED)
        # Waited for by address: the lift notices and the leak report's copies come in
        # any order around it, so a count of messages can be reached without it.
        deadline = time.monotonic() + 60
        while not _to(list(sink.messages), public) and time.monotonic() < deadline:
            time.sleep(0.05)
        (announced,) = _to(list(sink.messages), public)
    assert b"BEGIN PGP" not in announced.data  # the one plaintext mail, after both lifts
    assert b"is fixed in v1.31.2" in crlf(announced.data)


def _policy(tmp_path: Path, outsiders: str) -> str:
    path = tmp_path / "policy.toml"
    path.write_text(f'name = "test"\n[forwarding]\noutsiders = "{outsiders}"\n', encoding="utf-8")
    return f'\n[embargo]\npolicy = "{path}"\n'


def _notice_to(home: RelayHome, relay: RelayThread, recipient: str) -> str:
    """A notice about SHARED queued for someone the list does not know (a stale address)."""
    with home.db.transaction() as s:
        message_id = notices.enqueue_advisory_notice(
            s,
            relay.relay.spool,
            recipients=[recipient],
            subject=f"[list] {SHARED}: lift time moved",
            text=f"The lift of {SHARED} moved.\n",
            list_domain="example.org",
            reason="test",
            advisory_id=SHARED,
        )
    relay.relay.dispatcher.wake()
    return message_id


@pytest.mark.parametrize(("outsiders", "kind"), [("block", "blocked"), ("flag", "flagged")])
def test_a_copy_to_someone_who_is_no_party_is_held_and_reported(
    outsiders: str, kind: str, tmp_path: Path, keys: KeyFactory, sink: SmtpSink
):
    stale = "old-sender@corp.example"
    home = distributors(tmp_path, keys, sink.port, extra=_policy(tmp_path, outsiders))
    contact = keys.make("contact", CONTACT)
    home.add_sender(contact)
    with RelayThread(home.settings) as relay:
        _src(home, keys, relay, SHARED, "The flaw.")
        message_id = _notice_to(home, relay, stale)
        received = sink.wait_for(3, timeout=60)  # the two members, the leak report
        assert _to(received, stale) == []
        held = _delivery(home, stale, message_id)
        assert (held.status, held.last_code, held.held_for) == ("held", "embargo", None)
        # Asked again (an administrator's retry): held again, and not reported twice.
        with home.db.transaction() as s:
            delivery_queue.retry(s, held.id, "cli:test")
        relay.relay.dispatcher.wake()
        _wait_until(lambda: _delivery(home, stale, message_id).status == "held")
        (report,) = _to(sink.wait_for(3, timeout=60), CONTACT)
    with home.db.transaction() as s:
        (incident,) = s.execute(select(Incident)).scalars().all()
        actions = (
            s.execute(select(AuditEvent.action).where(AuditEvent.subject == str(held.id)))
            .scalars()
            .all()
        )
    assert incident.kind == f"forward-{kind}" and incident.recipients == [stale]
    assert actions == ["delivery.held", "delivery.retried", "delivery.held"]
    text = OpenedCopy(home.client(contact), report.data).text
    assert stale in text and SHARED in text and "forwarding rule 'outsider'" in text


def _wait_until(condition, timeout: float = 30) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("the condition did not come true")
        time.sleep(0.05)


def test_a_gate_that_cannot_answer_holds_that_copy_and_the_others_go(
    tmp_path: Path, keys: KeyFactory, sink: SmtpSink, monkeypatch: pytest.MonkeyPatch
):
    from relay.outbound import gate

    stale = "old-sender@corp.example"
    home = distributors(tmp_path, keys, sink.port)
    contact = keys.make("contact", CONTACT)
    home.add_sender(contact)
    answer = gate.Gate.check

    def broken_for_stale(self, session, *, recipient, **kwargs):  # type: ignore[no-untyped-def]
        if recipient == stale:
            raise OSError("spool unreadable")
        return answer(self, session, recipient=recipient, **kwargs)

    monkeypatch.setattr(gate.Gate, "check", broken_for_stale)
    with RelayThread(home.settings) as relay:
        _src(home, keys, relay, SHARED, "The flaw.")
        sink.wait_for(2, timeout=60)
        held_id = _notice_to(home, relay, stale)
        sent_id = _notice_to(home, relay, CONTACT)
        (notice,) = _to(sink.wait_for(3, timeout=60), CONTACT)
        _wait_until(lambda: _delivery(home, stale, held_id).status == "held")
    assert "lift time moved" in str(OpenedCopy(home.client(contact), notice.data).root["Subject"])
    assert _delivery(home, CONTACT, sent_id).status == "sent"
    held = _delivery(home, stale, held_id)
    assert (held.last_code, held.last_reason) == (
        "held",
        "the forwarding check failed (OSError); held to fail closed",
    )

"""What the intake believes of a signed post, tried as an attacker would: real gpg keys,
real SMTP on loopback, real SQLite. A signature is used once and only while fresh; only
signed data names a title or a Subject; a post is the signing key owner's, whatever the
envelope says; an earlier lift by mail waits for a second look."""

from __future__ import annotations

import email
import email.policy
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import func, select

from relay.cli.root import cli
from relay.model import (
    Advisory,
    AdvisoryState,
    AuditEvent,
    Contribution,
    Delivery,
    Incident,
    Member,
    Message,
    PendingChange,
    PendingChangeState,
    UsedSignature,
)
from tests.support import keys as support
from tests.support.keys import KeyFactory
from tests.support.mail import OpenedCopy, pgp_mime_signed, text_entity
from tests.support.relayhome import CONTACT, LIST, RelayHome, RelayThread, distributors
from tests.support.relayhome import smtp_post as _post
from tests.support.smtpsink import SmtpSink

ROOT = Path(__file__).resolve().parent.parent
ADV = "CVE-2026-4242"


def _home(tmp_path: Path, keys: KeyFactory, sink: SmtpSink, extra: str = "") -> RelayHome:
    return distributors(tmp_path, keys, sink.port, extra=extra)


def _signed(
    home: RelayHome,
    key: support.TestKey,
    body: str,
    *,
    subject: str = "(the outer Subject, which nothing signs)",
    protected_subject: str | None = None,
    from_: str | None = None,
    signed_at: int | None = None,
    **headers: str,
) -> bytes:
    data = pgp_mime_signed(
        home.client(key),
        key.fingerprint,
        text_entity(body, subject=protected_subject),
        subject=subject,
        sender=from_ or key.address,
        to=LIST,
        signed_at=signed_at,
    )
    extra = "".join(f"{name}: {value}\r\n" for name, value in headers.items()).encode()
    return extra + data


def _reheaded(post: bytes, subject: str) -> bytes:
    """The same signed body under new outer headers: what a replayer can change freely."""
    body = post[post.index(b"Content-Type: multipart/signed") :]
    return (
        f"From: attacker@evil.example\r\nTo: {LIST}\r\nSubject: {subject}\r\n"
        "Date: Mon, 07 Dec 2026 09:00:00 +0000\r\nMessage-ID: <replayed-1@evil.example>\r\n"
        "MIME-Version: 1.0\r\n"
    ).encode() + body


def _lift(home: RelayHome, advisory_id: str = ADV) -> datetime | None:
    with home.db.transaction() as s:
        advisory = s.get(Advisory, advisory_id)
        return None if advisory is None else advisory.lift_at


def _state(home: RelayHome) -> tuple[int, int, int, int]:
    """Everything a post can change: messages, deliveries, audit rows, incidents."""
    with home.db.transaction() as s:
        return tuple(  # type: ignore[return-value]
            s.scalar(select(func.count()).select_from(model)) or 0
            for model in (Message, Delivery, AuditEvent, Incident)
        )


def _at(moment: datetime) -> int:
    return int(moment.timestamp())


def _open_copies(home: RelayHome, member: support.TestKey, received: list) -> list[OpenedCopy]:
    return [
        OpenedCopy(home.client(member), m.data) for m in received if m.rcpt_tos == (member.address,)
    ]


# Every signature is used once


def test_the_exact_bytes_replayed_are_refused_and_change_nothing(
    tmp_path: Path, keys: KeyFactory, sink: SmtpSink
):
    home = _home(tmp_path, keys, sink)
    src = keys.make("src", "src@example.org")
    lift = (datetime.now(UTC) + timedelta(days=10)).replace(microsecond=0)
    post = _signed(home, src, f"X-Advisory: {ADV}\nX-Embargo-Until: {lift.isoformat()}\n\nFlaw.\n")
    with RelayThread(home.settings) as relay:
        assert relay.run(_post(relay.port, post))[0] == 250
        sink.wait_for(2, timeout=60)
        before = _state(home)
        for _ in range(2):
            code, reply = relay.run(_post(relay.port, post))
            assert code == 550 and reply.startswith("5.7.1") and "already received" in reply
        assert relay.relay is not None and relay.relay.handler.replays_refused == 2
    assert _state(home) == before
    assert _lift(home) == lift
    with home.db.transaction() as s:
        (used,) = s.execute(select(UsedSignature)).scalars().all()
        assert used.replays == 2 and used.last_replay_at is not None
        assert used.signer_fingerprint == src.fingerprint


def test_the_signed_body_replayed_under_new_headers_cannot_move_the_lift_back(
    tmp_path: Path, keys: KeyFactory, sink: SmtpSink
):
    """The chain that once lifted an advisory ten days early: a tentative lift, a signed move
    ten days out, then the first post replayed under new headers and envelope."""
    home = _home(tmp_path, keys, sink)
    src = keys.make("src", "src@example.org")
    first = _signed(home, src, f"X-Advisory: {ADV}\nX-Embargo-Until: +8d\n\nTentative.\n")
    later = _signed(home, src, f"X-Advisory: {ADV}\nX-Embargo-Until: +18d\n\nMoved out.\n")
    with RelayThread(home.settings) as relay:
        assert relay.run(_post(relay.port, first))[0] == 250
        assert relay.run(_post(relay.port, later))[0] == 250
        moved = _lift(home)
        before = _state(home)
        replay = _reheaded(first, "CANCELLED - the fix is public, deploy now")
        code, reply = relay.run(_post(relay.port, replay, sender="security@distro1.example"))
    assert code == 550 and "already received" in reply
    assert _lift(home) == moved and moved is not None
    assert moved - datetime.now(UTC) > timedelta(days=17)
    assert _state(home) == before


def test_replay_records_survive_a_restart(tmp_path: Path, keys: KeyFactory, sink: SmtpSink):
    home = _home(tmp_path, keys, sink)
    post = _signed(home, keys.make("src"), f"X-Advisory: {ADV}\n\nFlaw.\n")
    with RelayThread(home.settings) as relay:
        assert relay.run(_post(relay.port, post))[0] == 250
    with RelayThread(home.settings) as relay:
        code, reply = relay.run(_post(relay.port, post))
    assert code == 550 and "already received" in reply


def test_a_refused_leak_replayed_is_refused_as_a_replay_and_reported_once(
    tmp_path: Path, keys: KeyFactory, sink: SmtpSink
):
    policy = ROOT / "relay" / "policies" / "kubernetes-distributors.toml"
    home = _home(tmp_path, keys, sink, extra=f'\n[embargo]\npolicy = "{policy}"\n')
    src = keys.make("src", "src@example.org")
    lift = (datetime.now(UTC) + timedelta(days=9)).replace(microsecond=0)
    create = _signed(home, src, f"X-Advisory: {ADV}\nX-Embargo-Until: {lift.isoformat()}\n\nA.\n")
    leak = _signed(home, src, f"X-Advisory: {ADV}\n\nFor the boss.\n", Cc="boss@corp.example")
    with RelayThread(home.settings) as relay:
        assert relay.run(_post(relay.port, create))[0] == 250
        assert relay.run(_post(relay.port, leak))[0] == 550
        code, reply = relay.run(_post(relay.port, leak))
    assert code == 550 and "already received" in reply
    with home.db.transaction() as s:
        assert len(s.execute(select(Incident)).scalars().all()) == 1


# Fresh signatures only


@pytest.mark.parametrize(
    ("offset", "words"),
    [(timedelta(days=-6), "before it arrived"), (timedelta(hours=1), "in the future")],
    ids=["stale", "future-dated"],
)
def test_a_stale_or_future_dated_signature_is_refused(
    tmp_path: Path, keys: KeyFactory, sink: SmtpSink, offset: timedelta, words: str
):
    home = _home(tmp_path, keys, sink)
    old = keys.make(
        "oldsrc", "oldsrc@example.org", faked_time=f"{_at(datetime.now(UTC)) - 30 * 86400}"
    )
    home.add_sender(old)
    post = _signed(
        home, old, f"X-Advisory: {ADV}\n\nFlaw.\n", signed_at=_at(datetime.now(UTC) + offset)
    )
    with RelayThread(home.settings) as relay:
        code, reply = relay.run(_post(relay.port, post, sender=old.address))
    assert code == 550 and reply.startswith("5.7.1") and words in reply
    assert _lift(home) is None and _state(home)[0] == 0


def test_a_relative_lift_counts_from_the_signature_not_the_arrival(
    tmp_path: Path, keys: KeyFactory, sink: SmtpSink
):
    """A post that waited two days in a sending queue means what it meant when signed."""
    home = _home(tmp_path, keys, sink)
    old = keys.make(
        "oldsrc", "oldsrc@example.org", faked_time=f"{_at(datetime.now(UTC)) - 30 * 86400}"
    )
    home.add_sender(old)
    signed_at = _at(datetime.now(UTC) - timedelta(days=2))
    post = _signed(
        home, old, f"X-Advisory: {ADV}\nX-Embargo-Until: +10d\n\nFlaw.\n", signed_at=signed_at
    )
    with RelayThread(home.settings) as relay:
        assert relay.run(_post(relay.port, post, sender=old.address))[0] == 250
    assert _lift(home) == datetime.fromtimestamp(signed_at, UTC) + timedelta(days=10)


# Only signed content is believed


def test_title_and_copy_subject_come_only_from_signed_data(
    tmp_path: Path, keys: KeyFactory, sink: SmtpSink
):
    home = _home(tmp_path, keys, sink)
    src = keys.make("src", "src@example.org")
    distro0 = keys.make("distro0", "security@distro0.example")
    forged = "CANCELLED - the fix is public, deploy now"
    bare = _signed(home, src, f"X-Advisory: {ADV}\n\nFlaw.\n", subject=forged)
    titled = _signed(home, src, "X-Advisory: CVE-2026-4343\nX-Title: Kubelet escape\n\nB.\n")
    protected = _signed(
        home,
        src,
        "X-Advisory: CVE-2026-4444\n\nC.\n",
        subject="[...]",
        protected_subject="[EMBARGOED] CVE-2026-4444: apiserver bypass",
    )
    with RelayThread(home.settings) as relay:
        for post in (bare, titled, protected):
            assert relay.run(_post(relay.port, post))[0] == 250
        received = sink.wait_for(6, timeout=60)
    with home.db.transaction() as s:
        titles = {a.id: a.title for a in s.execute(select(Advisory)).scalars()}
    assert titles == {
        ADV: ADV,
        "CVE-2026-4343": "Kubelet escape",
        "CVE-2026-4444": "apiserver bypass",  # without the Subject's tag and the ID
    }
    subjects = sorted(str(c.root["Subject"]) for c in _open_copies(home, distro0, received))
    assert subjects == sorted(
        [ADV, "Kubelet escape", "[EMBARGOED] CVE-2026-4444: apiserver bypass"]
    )
    for copy in _open_copies(home, distro0, received):
        assert forged not in copy.root_bytes.decode(errors="replace")


def test_a_from_address_outside_the_signer_identity_is_refused(
    tmp_path: Path, keys: KeyFactory, sink: SmtpSink
):
    home = _home(tmp_path, keys, sink)
    src = keys.make("src", "src@example.org")
    distro0 = keys.make("distro0", "security@distro0.example")
    with RelayThread(home.settings) as relay:
        assert (
            relay.run(_post(relay.port, _signed(home, src, f"X-Advisory: {ADV}\n\nA.\n")))[0] == 250
        )
        posing = _signed(
            home, distro0, f"X-Advisory: {ADV}\n\nB.\n", from_="security@distro1.example"
        )
        code, reply = relay.run(_post(relay.port, posing, sender=distro0.address))
        assert code == 550 and reply.startswith("5.7.1")
        assert "security@distro1.example is not an address of the signer" in reply
        # An address in the member's own team is its own.
        team = _signed(home, distro0, f"X-Advisory: {ADV}\n\nC.\n", from_="dev@distro0.example")
        assert relay.run(_post(relay.port, team, sender=distro0.address))[0] == 250
        # A sender's post under a member's From is refused too.
        src_as_member = _signed(
            home, src, f"X-Advisory: {ADV}\n\nD.\n", from_="security@distro0.example"
        )
        assert relay.run(_post(relay.port, src_as_member))[0] == 550
        # A From that routes elsewhere (the percent hack) is no address of anyone's.
        routed = _signed(
            home, distro0, f"X-Advisory: {ADV}\n\nE.\n", from_="boss%corp.example@distro0.example"
        )
        code, reply = relay.run(_post(relay.port, routed, sender=distro0.address))
        assert code == 550 and reply.startswith("5.1.3"), reply


def test_a_from_mismatch_can_be_flagged_instead(tmp_path: Path, keys: KeyFactory, sink: SmtpSink):
    home = _home(tmp_path, keys, sink, extra='\n[intake]\nfrom_mismatch = "flag"\n')
    src = keys.make("src", "src@example.org")
    distro0 = keys.make("distro0", "security@distro0.example")
    post = _signed(home, src, f"X-Advisory: {ADV}\n\nA.\n", from_="ceo@example.com")
    with RelayThread(home.settings) as relay:
        assert relay.run(_post(relay.port, post))[0] == 250
        received = sink.wait_for(2, timeout=60)
    with home.db.transaction() as s:
        (message,) = s.execute(select(Message)).scalars().all()
        assert (message.poster, message.from_mismatch) == ("src@example.org", "ceo@example.com")
        accepted = s.execute(
            select(AuditEvent).where(AuditEvent.action == "message.accepted")
        ).scalar_one()
        assert accepted.actor == f"key:{src.fingerprint}"
        assert accepted.detail is not None and accepted.detail["from_mismatch"] == "ceo@example.com"
    (copy,) = _open_copies(home, distro0, received)
    assert "Posted to distributors@example.org by src@example.org" in copy.text
    notice = " ".join(copy.text.split())  # the notice is wrapped at 72 characters
    assert "From header named ceo@example.com, which is not an address of the signer" in notice


def test_incidents_and_statuses_belong_to_the_signer_whatever_mail_from_says(
    tmp_path: Path, keys: KeyFactory, sink: SmtpSink
):
    policy = ROOT / "relay" / "policies" / "kubernetes-distributors.toml"
    home = _home(tmp_path, keys, sink, extra=f'\n[embargo]\npolicy = "{policy}"\n')
    src = keys.make("src", "src@example.org")
    distro0 = keys.make("distro0", "security@distro0.example")
    distro1 = keys.make("distro1", "security@distro1.example")
    lift = (datetime.now(UTC) + timedelta(days=9)).replace(microsecond=0)
    create = _signed(home, src, f"X-Advisory: {ADV}\nX-Embargo-Until: {lift.isoformat()}\n\nA.\n")
    leak = _signed(home, distro0, f"X-Advisory: {ADV}\n\nFYI.\n", Cc="boss@corp.example")
    status = _signed(home, distro1, f"X-Advisory: {ADV}\nX-Status: reviewing\n\nOn it.\n")
    with RelayThread(home.settings) as relay:
        assert relay.run(_post(relay.port, create))[0] == 250
        # Signed by distro0, enveloped as distro1: the leak is distro0's.
        assert relay.run(_post(relay.port, leak, sender=distro1.address))[0] == 550
        # Signed by distro1, enveloped as distro0: the status is distro1's.
        assert relay.run(_post(relay.port, status, sender=distro0.address))[0] == 250
    with home.db.transaction() as s:
        members = {m.id: m.address for m in s.execute(select(Member)).scalars()}
        (incident,) = s.execute(select(Incident)).scalars().all()
        assert members[incident.member_id] == distro0.address
        assert incident.sender == distro0.address
        (contribution,) = s.execute(select(Contribution)).scalars().all()
        assert members[contribution.member_id] == distro1.address
        refused = s.get(Message, incident.message_id)
        assert refused is not None and refused.poster == distro0.address
        assert refused.mail_from == distro1.address  # kept as evidence only


# Shortening an embargo by mail needs a second look


def test_an_earlier_lift_waits_for_a_second_sender_or_the_cli(
    tmp_path: Path, keys: KeyFactory, sink: SmtpSink
):
    home = _home(tmp_path, keys, sink)
    src = keys.make("src", "src@example.org")
    src2 = keys.make("src2", "src2@example.org")
    home.add_sender(src2)
    start = datetime.now(UTC)
    runner = CliRunner()
    config = ["--config", str(home.config_path)]

    def send(key: support.TestKey, body: str) -> tuple[int, str]:
        return relay.run(_post(relay.port, _signed(home, key, body), sender=key.address))

    with RelayThread(home.settings) as relay:
        assert send(src, f"X-Advisory: {ADV}\nX-Embargo-Until: +20d\n\nThe flaw.\n")[0] == 250
        planned = _lift(home)
        assert planned is not None
        # Earlier: accepted, but the lift does not move; senders and contact are told.
        assert send(src, f"X-Advisory: {ADV}\nX-Embargo-Until: +10d\n\nSooner?\n")[0] == 250
        assert _lift(home) == planned
        shown = runner.invoke(cli, [*config, "advisory", "show", ADV, "--json"])
        assert shown.exit_code == 0, shown.output
        assert "pending_changes" in shown.output and f"key:{src.fingerprint}" in shown.output
        # Not by the same sender twice.
        code, reply = send(src, f"X-Confirm: {ADV}\n\nConfirmed.\n")
        assert code == 550 and "another sender or an administrator" in reply
        assert _lift(home) == planned
        # By a second sender: applied.
        assert send(src2, f"X-Confirm: {ADV}\n\nYes.\n")[0] == 250
        sooner = _lift(home)
        assert sooner is not None and timedelta(days=9) < sooner - start < timedelta(days=11)
        # Later again: applied at once, nothing waits.
        assert send(src, f"X-Advisory: {ADV}\nX-Embargo-Until: +30d\n\nLater.\n")[0] == 250
        latest = _lift(home)
        assert latest is not None and latest - start > timedelta(days=29)
        # Earlier again, confirmed by an administrator.
        assert send(src, f"X-Advisory: {ADV}\nX-Embargo-Until: +12d\n\nSooner.\n")[0] == 250
        assert _lift(home) == latest
        confirmed = runner.invoke(cli, [*config, "advisory", "confirm", ADV])
        assert confirmed.exit_code == 0, confirmed.output
        assert "as key:" in confirmed.output
        final = _lift(home)
        assert final is not None and timedelta(days=11) < final - start < timedelta(days=13)
        nothing = runner.invoke(cli, [*config, "advisory", "confirm", ADV])
        assert nothing.exit_code == 1 and "no change of" in nothing.output
        # An early lift by mail: held too, then confirmed by the other sender.
        assert send(src2, f"X-Advisory: {ADV}\nX-Lift: now\n\nIt broke.\n")[0] == 250
        with home.db.transaction() as s:
            assert s.get(Advisory, ADV).state == AdvisoryState.EMBARGOED  # type: ignore[union-attr]
        assert send(src, f"X-Confirm: {ADV}\n\nLift it.\n")[0] == 250
    with home.db.transaction() as s:
        assert s.get(Advisory, ADV).state == AdvisoryState.LIFTED  # type: ignore[union-attr]
        states = [
            p.state for p in s.execute(select(PendingChange).order_by(PendingChange.id)).scalars()
        ]
        assert states == [PendingChangeState.APPLIED] * 3
        actions = [
            e.action
            for e in s.execute(
                select(AuditEvent)
                .where(AuditEvent.subject == f"advisory:{ADV}")
                .order_by(AuditEvent.id)
            ).scalars()
        ]
        assert actions.count("advisory.change_requested") == 3
        assert actions.count("advisory.change_confirmed") == 3
        assert actions.count("advisory.lifted") == 1
        # Subjects are sealed: the database cannot search them, so the test reads them all.
        notices = [
            m
            for m in s.execute(select(Message)).scalars()
            if m.subject.endswith("waits for confirmation")
        ]
        assert len(notices) == 3
        recipients = {
            d.recipient
            for d in s.execute(
                select(Delivery).where(Delivery.message_id.in_([n.id for n in notices]))
            ).scalars()
        }
        assert recipients == {"src@example.org", "src2@example.org", CONTACT}


def test_keyword_lines_given_twice_are_refused_over_smtp(
    tmp_path: Path, keys: KeyFactory, sink: SmtpSink
):
    home = _home(tmp_path, keys, sink)
    src = keys.make("src", "src@example.org")
    twice = _signed(
        home, src, f"X-Advisory: {ADV}\nX-Embargo-Until: +9d\nX-Embargo-Until: +2d\n\nA.\n"
    )
    both = _signed(home, src, f"X-Advisory: {ADV}\nX-Embargo-Until: +9d\nX-Lift: now\n\nB.\n")
    with RelayThread(home.settings) as relay:
        code, reply = relay.run(_post(relay.port, twice))
        assert code == 550 and reply.startswith("5.6.0")
        assert "'X-Embargo-Until: +9d' and 'X-Embargo-Until: +2d'" in reply
        code, reply = relay.run(_post(relay.port, both))
        assert code == 550 and reply.startswith("5.6.0") and "contradict" in reply
    assert _state(home)[0] == 0 and _lift(home) is None


def test_the_same_words_signed_again_later_are_a_new_post(
    tmp_path: Path, keys: KeyFactory, sink: SmtpSink
):
    """Used once means this signature once, not these words once: a sender may repeat."""
    home = _home(tmp_path, keys, sink)
    src = keys.make("src", "src@example.org")
    body = f"X-Advisory: {ADV}\n\nReminder: patch by Thursday.\n"
    with RelayThread(home.settings) as relay:
        assert relay.run(_post(relay.port, _signed(home, src, body)))[0] == 250
        time.sleep(1.1)  # a signature's creation time has a resolution of one second
        assert relay.run(_post(relay.port, _signed(home, src, body)))[0] == 250
    with home.db.transaction() as s:
        assert len(s.execute(select(UsedSignature)).scalars().all()) == 2


def test_a_reply_is_threaded_by_its_signed_in_reply_to_only(
    tmp_path: Path, keys: KeyFactory, sink: SmtpSink
):
    home = _home(tmp_path, keys, sink)
    src = keys.make("src", "src@example.org")
    distro0 = keys.make("distro0", "security@distro0.example")
    with RelayThread(home.settings) as relay:
        assert (
            relay.run(_post(relay.port, _signed(home, src, f"X-Advisory: {ADV}\n\nA.\n")))[0] == 250
        )
        copy = next(m for m in sink.wait_for(2, timeout=60) if m.rcpt_tos == (distro0.address,))
        copy_id = email.message_from_bytes(copy.data, policy=email.policy.default)["Message-ID"]
        # In-Reply-To outside the signature: anyone on the path could have set it.
        unsigned = _signed(home, distro0, "Looks good.\n", **{"In-Reply-To": copy_id})
        code, reply = relay.run(_post(relay.port, unsigned, sender=distro0.address))
        assert code == 550 and "name the advisory" in reply
        signed = pgp_mime_signed(
            home.client(distro0),
            distro0.fingerprint,
            text_entity("Looks good.\n", protected={"In-Reply-To": copy_id}),
            subject="Re: [...]",
            sender=distro0.address,
            to=LIST,
        )
        assert relay.run(_post(relay.port, signed, sender=distro0.address))[0] == 250
    with home.db.transaction() as s:
        reply_row = s.execute(
            select(Message).where(Message.signer_fingerprint == distro0.fingerprint)
        ).scalar_one()
        assert reply_row.advisory_id == ADV and reply_row.subject == ADV


def test_an_embargo_time_beyond_the_calendar_is_refused_permanently(
    tmp_path: Path, keys: KeyFactory, sink: SmtpSink
):
    """Not 451 (the sending MTA would retry for days): the post can never be read."""
    home = _home(tmp_path, keys, sink)
    post = _signed(
        home, keys.make("src"), f"X-Advisory: {ADV}\nX-Embargo-Until: +99999999w\n\nA.\n"
    )
    with RelayThread(home.settings) as relay:
        code, reply = relay.run(_post(relay.port, post))
    assert code == 550 and reply.startswith("5.6.0") and "beyond any date" in reply
    assert _state(home)[0] == 0

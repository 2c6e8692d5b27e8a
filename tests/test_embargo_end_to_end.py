"""The embargo lifecycle through the running relay: keyword lines in a signed post,
the embargo notice in every copy, a moved lift, and the lift itself on an injected
clock, exactly once across restarts. Real gpg, real SMTP, real SQLite.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import func, select

from relay.model import Advisory, AdvisoryState, AuditEvent, Delivery, Message, MessageKind
from tests.support.keys import KeyFactory
from tests.support.mail import OpenedCopy, pgp_mime_signed, text_entity
from tests.support.relayhome import LIST, OffsetClock, RelayHome, RelayThread, distributors
from tests.support.relayhome import smtp_post as _post
from tests.support.smtpsink import SmtpSink

BERLIN = ZoneInfo("Europe/Berlin")


@pytest.fixture
def home(tmp_path: Path, keys: KeyFactory, sink: SmtpSink) -> RelayHome:
    return distributors(tmp_path, keys, sink.port)


def _lift_in(days: int) -> datetime:
    """A wall time in Berlin some days ahead, at 15:00 local."""
    day = (datetime.now(BERLIN) + timedelta(days=days)).date()
    return datetime(day.year, day.month, day.day, 15, 0, tzinfo=BERLIN)


def _advisory_post(home: RelayHome, keys: KeyFactory, body: str, subject: str) -> bytes:
    src = keys.make("src", "src@example.org")
    return pgp_mime_signed(
        home.client(src),
        src.fingerprint,
        text_entity(body),
        subject=subject,
        sender=src.address,
        to=LIST,
    )


def _members(keys: KeyFactory):
    return [keys.make(f"distro{n}", f"security@distro{n}.example") for n in range(2)]


def _opened(home: RelayHome, keys: KeyFactory, received) -> dict[str, list[OpenedCopy]]:
    by_member: dict[str, list[OpenedCopy]] = {}
    for member in _members(keys):
        for message in received:
            if message.rcpt_tos == (member.address,):
                by_member.setdefault(member.address, []).append(
                    OpenedCopy(home.client(member), message.data)
                )
    return by_member


def test_keyword_lines_declare_the_advisory_and_every_copy_carries_the_embargo(
    home: RelayHome, keys: KeyFactory, sink: SmtpSink
):
    lift = _lift_in(10)
    body = (
        f"X-Advisory: CVE-2026-1234\n"
        f"X-Embargo-Until: {lift:%Y-%m-%d %H:%M} Europe/Berlin\n\n"
        "Details of the flaw, for distributors only.\n"
    )
    post = _advisory_post(home, keys, body, "[EMBARGOED] CVE-2026-1234: a flaw")
    with RelayThread(home.settings) as relay:
        code, reply = relay.run(_post(relay.port, post))
        assert code == 250, reply
        received = sink.wait_for(2, timeout=60)

    lift_utc = lift.astimezone(UTC)
    with home.db.transaction() as s:
        advisory = s.get_one(Advisory, "CVE-2026-1234")
        assert advisory.state == AdvisoryState.EMBARGOED
        assert advisory.lift_at == lift_utc
        assert advisory.created_by == f"key:{keys.make('src').fingerprint}"
        assert {d.advisory_id for d in s.execute(select(Delivery)).scalars()} == {"CVE-2026-1234"}
    for copies in _opened(home, keys, received).values():
        (copy,) = copies
        assert copy.signer == home.list_fpr
        assert copy.root["X-Advisory"] == "CVE-2026-1234"
        assert copy.root["X-Embargo-Until"] == lift_utc.strftime("%Y-%m-%dT%H:%M:%SZ")
        assert f"EMBARGOED until {lift_utc:%Y-%m-%d %H:%M} UTC" in copy.text
        assert "need-to-know" in copy.text and "security@example.org" in copy.text
        assert "Details of the flaw" in copy.text
        assert "X-Embargo-Until:" not in copy.text  # keyword lines are stripped


def test_unreadable_embargo_time_is_refused_with_the_accepted_forms(
    home: RelayHome, keys: KeyFactory
):
    body = "X-Advisory: CVE-2026-2222\nX-Embargo-Until: next tuesday-ish\n\nText.\n"
    post = _advisory_post(home, keys, body, "[EMBARGOED] CVE-2026-2222")
    with RelayThread(home.settings, dispatch=False) as relay:
        code, reply = relay.run(_post(relay.port, post))
    assert code == 550 and reply.startswith("5.6.0")
    assert "Europe/Berlin" in reply or "ISO 8601" in reply  # it shows the accepted forms
    with home.db.transaction() as s:
        assert s.execute(select(func.count(Advisory.id))).scalar() == 0
        assert s.execute(select(func.count(Message.id))).scalar() == 0


def test_a_post_that_moves_the_lift_notifies_every_member(
    home: RelayHome, keys: KeyFactory, sink: SmtpSink
):
    first, moved = _lift_in(10), _lift_in(12)
    post1 = _advisory_post(
        home,
        keys,
        f"X-Advisory: CVE-2026-3333\nX-Embargo-Until: {first.isoformat()}\n\nv1\n",
        "[EMBARGOED] CVE-2026-3333",
    )
    post2 = _advisory_post(
        home,
        keys,
        f"X-Advisory: CVE-2026-3333\nX-Embargo-Until: {moved.isoformat()}\n\nv2\n",
        "[EMBARGOED] CVE-2026-3333 (update)",
    )
    with RelayThread(home.settings) as relay:
        assert relay.run(_post(relay.port, post1))[0] == 250
        sink.wait_for(2, timeout=60)
        assert relay.run(_post(relay.port, post2))[0] == 250
        received = sink.wait_for(6, timeout=60)  # post 1, move notice, post 2 (x2 members)
    for copies in _opened(home, keys, received).values():
        texts = [c.text for c in copies]
        notice = next(t for t in texts if "has been moved" in t)
        assert f"{moved.astimezone(UTC):%Y-%m-%d %H:%M} UTC" in notice
        assert f"{first.astimezone(UTC):%Y-%m-%d %H:%M} UTC" in notice
    with home.db.transaction() as s:
        assert s.get_one(Advisory, "CVE-2026-3333").lift_at == moved.astimezone(UTC)
        actions = (
            s.execute(
                select(AuditEvent.action).where(AuditEvent.subject == "advisory:CVE-2026-3333")
            )
            .scalars()
            .all()
        )
        assert actions == ["advisory.created", "advisory.moved"]


def test_lift_missed_while_down_runs_at_start_exactly_once(
    home: RelayHome, keys: KeyFactory, sink: SmtpSink
):
    clock = OffsetClock()
    lift = _lift_in(3)
    post = _advisory_post(
        home,
        keys,
        f"X-Advisory: CVE-2026-4444\nX-Embargo-Until: {lift.isoformat()}\n\nText\n",
        "[EMBARGOED] CVE-2026-4444",
    )
    with RelayThread(home.settings, clock=clock) as relay:
        assert relay.run(_post(relay.port, post))[0] == 250
        sink.wait_for(2, timeout=60)
        with home.db.transaction() as s:
            assert s.get_one(Advisory, "CVE-2026-4444").state == AdvisoryState.EMBARGOED

    clock.jump_to(lift.astimezone(UTC) + timedelta(hours=5))  # the relay was down at the lift
    for _ in range(2):  # two restarts: the lift happens at the first, never again
        with RelayThread(home.settings, clock=clock):
            sink.wait_for(4, timeout=60)
            asyncio.run(asyncio.sleep(0.3))
    with home.db.transaction() as s:
        advisory = s.get_one(Advisory, "CVE-2026-4444")
        assert advisory.state == AdvisoryState.LIFTED
        lifted = s.execute(
            select(func.count(AuditEvent.id)).where(
                AuditEvent.subject == "advisory:CVE-2026-4444",
                AuditEvent.action == "advisory.lifted",
            )
        ).scalar()
        assert lifted == 1
        notices = s.execute(
            select(func.count(Message.id)).where(
                Message.kind == MessageKind.NOTICE, Message.advisory_id == "CVE-2026-4444"
            )
        ).scalar()
        assert notices == 1
    assert len(sink.messages) == 4
    for copies in _opened(home, keys, sink.messages).values():
        assert any("embargo" in c.text.lower() and "over" in c.text.lower() for c in copies)


def test_pending_lift_fires_on_the_injected_clock_after_a_restart(
    home: RelayHome, keys: KeyFactory, sink: SmtpSink
):
    clock = OffsetClock()
    lift = _lift_in(5)
    post = _advisory_post(
        home,
        keys,
        f"X-Advisory: CVE-2026-5555\nX-Embargo-Until: {lift.isoformat()}\n\nText\n",
        "[EMBARGOED] CVE-2026-5555",
    )
    with RelayThread(home.settings, clock=clock) as relay:
        assert relay.run(_post(relay.port, post))[0] == 250
        sink.wait_for(2, timeout=60)
    with RelayThread(home.settings, clock=clock) as relay:  # restarted before the lift
        with home.db.transaction() as s:
            assert s.get_one(Advisory, "CVE-2026-5555").state == AdvisoryState.EMBARGOED
        clock.jump_to(lift.astimezone(UTC) + timedelta(seconds=1))
        relay.relay.scheduler.tick()
        relay.relay.scheduler.tick()
        sink.wait_for(4, timeout=60)
    with home.db.transaction() as s:
        assert s.get_one(Advisory, "CVE-2026-5555").state == AdvisoryState.LIFTED
        assert (
            s.execute(
                select(func.count(Message.id)).where(Message.kind == MessageKind.NOTICE)
            ).scalar()
            == 1
        )

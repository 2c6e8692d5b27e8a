"""Contributing back: statuses per advisory and member, the matrix, and the reminders."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from relay.app import advisories, advisory_admin, contributions, members, membership
from relay.core.errors import RelayError
from relay.model import AuditEvent, Delivery, StatusReminder
from relay.policy.timing import NO_RULES
from relay.store import delivery_queue, incoming
from relay.store.spool import PAYLOAD, Spool
from tests.support.keys import KeyFactory
from tests.support.relayhome import RelayHome

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
LIFT = NOW + timedelta(days=1)  # within the default two days
A, B, C = "security@a.example", "security@b.example", "security@c.example"
RETRY = delivery_queue.Retry(timedelta(minutes=1), timedelta(hours=1), timedelta(days=5))


@pytest.fixture
def home(tmp_path: Path, keys: KeyFactory) -> RelayHome:
    home = RelayHome(tmp_path, keys)
    for address in (A, B):
        home.add_member(keys.make(address.split("@")[1].split(".")[0] + "-contrib", address))
    return home


def advisory(home: RelayHome, advisory_id: str, lift_at: datetime | None) -> None:
    with home.db.transaction() as s:
        advisories.create(s, advisory_id, "Proxy bypass", lift_at, "cli:t", NO_RULES, NOW)


def post(home: RelayHome, advisory_id: str) -> None:
    """A post of the advisory accepted and sent to every active member (the real queue)."""
    incoming.accept_post(
        home.db,
        Spool(home.db),
        incoming.Post(b"raw\r\n", b"payload\r\n", "S", "src@example.org", "F" * 40, None),
        list_domain="example.org",
        route=lambda session, spool, message_id: incoming.Routing(advisory_id),
    )
    ids = delivery_queue.claim_due(home.db, datetime.now(UTC), 100, timedelta(minutes=5))
    outcomes = [delivery_queue.Attempt(i, "sent", "250", "ok") for i in ids]
    delivery_queue.record_outcomes(home.db, outcomes, now=NOW, retry=RETRY)


def set_status(home: RelayHome, member: str, status: str, text: str | None = None):
    return contributions.set_member_status(home.db, "CVE-2026-1", member, status, text, "cli:t")


def test_statuses_are_recorded_audited_without_their_text_and_shown_as_a_matrix(
    home: RelayHome,
) -> None:
    advisory(home, "CVE-2026-1", LIFT)
    change = set_status(home, A, "acknowledged")
    assert (change.old, change.new, change.changed) == ("none", "acknowledged", True)
    change = set_status(home, "Security@A.example", "issue-found", "crash in the patch for 1.30")
    assert (change.old, change.new) == ("acknowledged", "issue-found")
    assert not set_status(home, A, "issue-found", "crash in the patch for 1.30").changed

    with home.db.transaction() as s:
        rows = s.execute(
            select(AuditEvent).where(AuditEvent.action == "advisory.status").order_by(AuditEvent.id)
        ).scalars()
        details = [(r.subject, r.detail) for r in rows]
    assert details[-1] == (
        "advisory:CVE-2026-1",
        {"member": A, "old": "acknowledged", "new": "issue-found", "text_chars": 27},
    )
    assert "crash" not in repr(details)  # a finding is as confidential as the advisory

    report = contributions.status_report(home.db, "CVE-2026-1")
    assert [(r.member, r.status, r.text) for r in report.rows] == [
        (A, "issue-found", "crash in the patch for 1.30"),
        (B, "none", None),
    ]
    assert report.counts["issue-found"] == 1 and report.counts["none"] == 1
    assert advisory_admin.advisory_report(home.db, "CVE-2026-1").statuses == report.rows

    # A member's answer is part of its history too.
    detail = members.member_detail(home.db, home.crypto, A)
    assert [h.action for h in detail.history][-2:] == ["advisory.status", "advisory.status"]


@pytest.mark.parametrize(
    ("member", "status", "text", "message"),
    [
        (A, "issue-found", None, "issue-found needs a text"),
        (A, "fixed", None, "unknown status 'fixed'"),
        ("nobody@a.example", "reviewing", None, "no member nobody@a.example"),
        (A, "reviewing", "x" * 4001, "too long"),
    ],
)
def test_bad_statuses_are_refused(
    home: RelayHome, member: str, status: str, text: str | None, message: str
) -> None:
    advisory(home, "CVE-2026-1", LIFT)
    with pytest.raises(RelayError, match=message):
        set_status(home, member, status, text)
    assert contributions.status_report(home.db, "CVE-2026-1").counts["none"] == 2


def test_status_refused_for_removed_members_and_withdrawn_or_unknown_advisories(
    home: RelayHome,
) -> None:
    advisory(home, "CVE-2026-1", LIFT)
    membership.change_state(home.db, B, "remove", "t", "left")
    with pytest.raises(RelayError, match="not a member any more"):
        set_status(home, B, "reviewing")
    with pytest.raises(RelayError, match="no advisory"):
        contributions.set_member_status(home.db, "CVE-1999-1", A, "reviewing", None, "t")
    with home.db.transaction() as s:
        advisories.cancel(s, "CVE-2026-1", "t", None, NOW)
    with pytest.raises(RelayError, match="withdrawn"):
        set_status(home, A, "reviewing")


def test_parse_status_takes_what_people_write() -> None:
    assert contributions.parse_status(" Tested no_issues ") == "tested-no-issues"
    assert contributions.parse_status("ISSUE-FOUND") == "issue-found"


def test_reminders_go_to_members_who_received_it_and_did_not_answer_once(
    home: RelayHome, keys: KeyFactory
) -> None:
    spool = Spool(home.db)
    advisory(home, "CVE-2026-1", LIFT)
    advisory(home, "CVE-2026-2", NOW + timedelta(days=5))  # not yet due
    post(home, "CVE-2026-1")
    post(home, "CVE-2026-2")
    home.add_member(keys.make("c-contrib", C))  # joined later: received nothing to answer
    set_status(home, A, "tested-no-issues")

    assert contributions.send_status_reminders(home.db, spool, home.settings, NOW) == [
        f"CVE-2026-1:{B}"
    ]
    with home.db.transaction() as s:
        [reminder] = s.execute(select(StatusReminder)).scalars()
        [delivery] = s.execute(
            select(Delivery).where(Delivery.message_id == reminder.message_id)
        ).scalars()
        assert (delivery.recipient, delivery.plaintext_allowed) == (B, False)
        assert delivery.advisory_id == "CVE-2026-1"
    text = spool.read(reminder.message_id, PAYLOAD).decode()
    assert "X-Advisory: CVE-2026-1" in text and "X-Status:" in text

    later = NOW + timedelta(hours=12)
    assert contributions.send_status_reminders(home.db, spool, home.settings, later) == []
    # Three days on, the other advisory is two days from its lift: its turn, once.
    day4 = NOW + timedelta(days=3, hours=1)
    assert contributions.send_status_reminders(home.db, spool, home.settings, day4) == [
        f"CVE-2026-2:{A}",
        f"CVE-2026-2:{B}",
    ]
    assert contributions.send_status_reminders(home.db, spool, home.settings, day4) == []

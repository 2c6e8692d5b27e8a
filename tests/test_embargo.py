"""The lift and the embargo notices on real SQLite: exactly once, to the right people."""

from __future__ import annotations

import asyncio
import email
import email.policy
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from pydantic import ValidationError
from sqlalchemy import func, select

from relay.app import advisories, embargo, reminders
from relay.core import config as relay_config
from relay.core.config import EmbargoSettings
from relay.core.database import Database
from relay.model import (
    Advisory,
    AdvisoryState,
    AuditEvent,
    Delivery,
    DeliveryStatus,
    HoldReason,
    Member,
    MemberState,
    Message,
    MessageKind,
    Sender,
)
from relay.outbound.preface import embargo_preface, protected_fields
from relay.policy.timing import NO_RULES, load_policy
from relay.runners.dispatcher import Dispatcher
from relay.store import delivery_queue, notices
from relay.store.spool import PAYLOAD, Spool
from tests.support.keys import KeyFactory
from tests.support.mail import OpenedCopy
from tests.support.relayhome import (
    CONTACT,
    RelayHome,
    another_handle,
    migrated_database,
    write_config,
)

POLICIES = Path(__file__).resolve().parent.parent / "relay" / "policies"
K8S = load_policy(POLICIES / "kubernetes-distributors.toml")
NOW = datetime(2026, 11, 24, 10, 0, tzinfo=UTC)
LIFT = datetime(2026, 12, 3, 16, 0, tzinfo=UTC)
PUBLIC = "kubernetes-announce@example.com"
EMBARGO = f'[embargo]\npublic_addresses = ["{PUBLIC}"]\n'


@pytest.fixture
def settings(tmp_path: Path) -> relay_config.Settings:
    return relay_config.load(write_config(tmp_path, extra=EMBARGO))


@pytest.fixture
def db(tmp_path: Path, settings: relay_config.Settings) -> Database:
    database = migrated_database(tmp_path, settings)
    with database.transaction() as s:
        for n in range(3):
            s.add(Member(address=f"m{n}@distro.example", name=f"M{n}"))
        s.add(Member(address="old@distro.example", name="Old", state=MemberState.SUSPENDED))
        s.add(Sender(address="src1@k8s.example"))
        s.add(Sender(address="src2@k8s.example"))
    return database


@pytest.fixture
def spool(db: Database) -> Spool:
    return Spool(db)


def create(db: Database, advisory_id: str, lift_at: datetime | None, **changes: object) -> None:
    with db.transaction() as s:
        advisory = advisories.create(
            s, advisory_id, f"Title {advisory_id}", lift_at, "cli:t", NO_RULES, NOW
        ).advisory
        for name, value in changes.items():
            setattr(advisory, name, value)


def notices_about(db: Database, advisory_id: str) -> list[Message]:
    with db.transaction() as s:
        return [
            *s.execute(
                select(Message)
                .where(Message.advisory_id == advisory_id, Message.kind == MessageKind.NOTICE)
                .order_by(Message.received_at, Message.id)
            ).scalars()
        ]


def deliveries(db: Database, message_id: str) -> list[Delivery]:
    with db.transaction() as s:
        return [
            *s.execute(
                select(Delivery)
                .where(Delivery.message_id == message_id)
                .order_by(Delivery.recipient)
            ).scalars()
        ]


def text_of(spool: Spool, message_id: str) -> str:
    part = email.message_from_bytes(spool.read(message_id, PAYLOAD), policy=email.policy.default)
    return part.get_content().replace("\r\n", "\n")


def audit_count(db: Database, action: str) -> int:
    with db.transaction() as s:
        return s.execute(select(func.count()).where(AuditEvent.action == action)).scalar_one()


# The lift


def test_lift_happens_once_and_tells_every_active_member_encrypted(db, spool, settings):
    create(db, "CVE-2026-1", LIFT)
    assert embargo.lift_due(db, spool, settings, LIFT - timedelta(seconds=1)) == []
    assert embargo.lift_due(db, spool, settings, LIFT) == ["CVE-2026-1"]
    assert embargo.lift_due(db, spool, settings, LIFT + timedelta(minutes=1)) == []
    with db.transaction() as s:
        advisory = advisories.get(s, "CVE-2026-1")
        assert (advisory.state, advisory.lifted_at) == (AdvisoryState.LIFTED, LIFT)
    [notice] = notices_about(db, "CVE-2026-1")
    rows = deliveries(db, notice.id)
    assert [d.recipient for d in rows] == [f"m{n}@distro.example" for n in range(3)]
    assert all(d.member_id is not None and not d.plaintext_allowed for d in rows)
    assert {d.advisory_id for d in rows} == {"CVE-2026-1"}
    assert {d.status for d in rows} == {DeliveryStatus.QUEUED}
    text = text_of(spool, notice.id)
    assert "The embargo of advisory CVE-2026-1 (Title CVE-2026-1) is over." in text
    assert "Lifted at: 2026-12-03 16:00 UTC" in text
    assert audit_count(db, "advisory.lifted") == 1


def test_concurrent_lifts_from_two_threads_lift_each_advisory_once(db, spool, settings):
    ids = [f"CVE-2026-10{n}" for n in range(6)]
    for advisory_id in ids:
        create(db, advisory_id, LIFT)
    second = another_handle(db)  # as if a second process
    barrier = threading.Barrier(2)
    results: list[list[str]] = []

    def run(database: Database) -> None:
        barrier.wait()
        results.append(embargo.lift_due(database, spool, settings, LIFT))

    threads = [threading.Thread(target=run, args=(d,)) for d in (db, second)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(results) == 2
    assert sorted(results[0] + results[1]) == ids  # every advisory lifted, none twice
    for advisory_id in ids:
        assert len(notices_about(db, advisory_id)) == 1
    assert audit_count(db, "advisory.lifted") == len(ids)
    second.dispose()


def test_a_moved_lift_fires_at_the_new_time_only(db, spool, settings):
    create(db, "CVE-2026-2", LIFT)
    later = LIFT + timedelta(days=2)
    with db.transaction() as s:
        advisories.schedule(s, "CVE-2026-2", later, "cli:t", "respin", NO_RULES, NOW)
    assert embargo.lift_due(db, spool, settings, LIFT + timedelta(hours=1)) == []
    assert embargo.lift_due(db, spool, settings, later) == ["CVE-2026-2"]


def test_cancelled_and_unscheduled_advisories_are_never_lifted(db, spool, settings):
    create(db, "CVE-2026-3", None)
    create(db, "CVE-2026-4", LIFT)
    with db.transaction() as s:
        advisories.cancel(s, "CVE-2026-4", "cli:t", "withdrawn")
    assert embargo.lift_due(db, spool, settings, LIFT + timedelta(days=365)) == []


def test_public_text_goes_out_only_when_marked_and_only_at_the_lift(db, spool, settings):
    create(db, "CVE-2026-5", LIFT, title="[EMBARGOED] CVE-2026-5: kubelet escape")
    create(db, "CVE-2026-6", LIFT)
    with db.transaction() as s:
        advisories.set_public_text(s, "CVE-2026-5", "Public advisory text.\n", "cli:t")
    embargo.lift_due(db, spool, settings, LIFT - timedelta(minutes=1))
    with db.transaction() as s:
        assert s.execute(select(Delivery).where(Delivery.recipient == PUBLIC)).first() is None
    embargo.lift_due(db, spool, settings, LIFT)
    lift_notice, public = notices_about(db, "CVE-2026-5")
    [delivery] = deliveries(db, public.id)
    assert (delivery.recipient, delivery.plaintext_allowed, delivery.member_id) == (
        PUBLIC,
        True,
        None,
    )
    assert public.subject == "[Security Advisory] CVE-2026-5: kubelet escape"
    assert text_of(spool, public.id) == "Public advisory text.\n"
    assert f"The public text was sent to: {PUBLIC}" in text_of(spool, lift_notice.id)
    assert len(notices_about(db, "CVE-2026-6")) == 1  # not marked: members only
    with db.transaction() as s:
        plaintext = s.execute(
            select(Delivery).where(Delivery.plaintext_allowed.is_(True))
        ).scalars()
        assert [d.recipient for d in plaintext] == [PUBLIC]


def test_deliveries_held_only_for_the_embargo_are_released_at_the_lift(db, spool, settings):
    create(db, "CVE-2026-7", LIFT)
    with db.transaction() as s:
        message_id, _ = notices.enqueue_list_notice(
            s,
            spool,
            subject="s",
            text="t",
            list_domain="example.org",
            reason="r",
            advisory_id="CVE-2026-7",
        )
    with db.transaction() as s:
        first, second, third = s.execute(
            select(Delivery).where(Delivery.message_id == message_id).order_by(Delivery.id)
        ).scalars()
        for d in (first, second):
            delivery_queue.hold_for_lift(s, d, "CVE-2026-7", "under embargo", "outsider")
        delivery_queue.hold(s, third, "no usable key: expired", why=HoldReason.NO_KEY)  # stays
    embargo.lift_due(db, spool, settings, LIFT)
    statuses = [d.status for d in deliveries(db, message_id)]
    assert sorted(statuses) == sorted(
        [DeliveryStatus.QUEUED, DeliveryStatus.QUEUED, DeliveryStatus.HELD]
    )
    assert audit_count(db, "delivery.released") == 1


def test_lift_now_lifts_at_once_with_the_admins_reason(db, spool, settings):
    create(db, "CVE-2026-8", LIFT)
    done = embargo.lift_now(
        db, spool, settings, "cve-2026-8", actor="cli:t", reason="embargo broken", now=NOW
    )
    assert done.advisory_id == "CVE-2026-8"
    text = text_of(spool, done.notices[0])
    assert "Reason: embargo broken" in text
    assert "Scheduled: 2026-12-03 16:00 UTC (lifted early)" in text
    with db.transaction() as s:
        lifted = s.execute(
            select(AuditEvent).where(AuditEvent.action == "advisory.lifted")
        ).scalar_one()
        assert (lifted.actor, lifted.detail["reason"]) == ("cli:t", "embargo broken")
    with pytest.raises(advisories.AdvisoryClosed):
        embargo.lift_now(db, spool, settings, "CVE-2026-8", actor="cli:t", reason=None, now=NOW)


# Schedule changes


def test_schedule_change_notice_to_every_active_member(db, spool, settings):
    create(db, "CVE-2026-9", LIFT)
    earlier = LIFT - timedelta(days=1)
    with db.transaction() as s:
        change = advisories.schedule(
            s, "CVE-2026-9", earlier, "cli:t", "fix is ready", NO_RULES, NOW
        )
        message_id = embargo.notify_schedule_change(
            s, spool, settings, change.advisory, change.old, change.new, "fix is ready"
        )
    rows = deliveries(db, message_id)
    assert len(rows) == 3 and all(not d.plaintext_allowed and d.member_id for d in rows)
    [message] = notices_about(db, "CVE-2026-9")
    assert (
        message.subject == "[Test distributors] CVE-2026-9: lift time moved to 2026-12-02 16:00 UTC"
    )
    text = text_of(spool, message_id)
    assert "New lift time: 2026-12-02 16:00 UTC" in text
    assert "Old lift time: 2026-12-03 16:00 UTC" in text
    assert "Reason: fix is ready" in text
    assert "EARLIER" in text


# Reminders


def reminder_messages(db: Database) -> list[Message]:
    with db.transaction() as s:
        # Subjects are sealed: the database cannot search them, so read them all.
        messages = s.execute(select(Message).order_by(Message.received_at)).scalars()
        return [m for m in messages if "Reminder" in m.subject]


def test_reminders_go_to_senders_and_contact_each_exactly_once(db, spool, settings):
    create(db, "CVE-2026-11", LIFT)
    assert reminders.send_due_reminders(db, spool, settings, LIFT - timedelta(hours=49), K8S) == []
    at_48h = LIFT - timedelta(hours=47)
    assert reminders.send_due_reminders(db, spool, settings, at_48h, K8S) == [
        "CVE-2026-11:remind-48h"
    ]
    assert reminders.send_due_reminders(db, spool, settings, at_48h, K8S) == []
    [first] = reminder_messages(db)
    assert first.subject == "[Test distributors] Reminder: CVE-2026-11 lifts in 48h"
    rows = deliveries(db, first.id)
    assert [d.recipient for d in rows] == [
        "security@example.org",
        "src1@k8s.example",
        "src2@k8s.example",
    ]
    assert all(not d.plaintext_allowed and d.member_id is None for d in rows)
    text = text_of(spool, first.id)
    assert "lifts in 1d 23h, at 2026-12-03 16:00 UTC" in text
    assert "second notice with the final public text is due by 2026-12-02 16:00 UTC" in text
    assert "Public text: NOT attached yet" in text
    at_1h = LIFT - timedelta(minutes=30)
    assert reminders.send_due_reminders(db, spool, settings, at_1h, K8S) == [
        "CVE-2026-11:remind-1h"
    ]
    assert reminders.send_due_reminders(db, spool, settings, at_1h, K8S) == []
    _, last = reminder_messages(db)
    assert "second notice" not in text_of(spool, last.id)  # only the one before the deadline
    assert reminders.send_due_reminders(db, spool, settings, LIFT, K8S) == []


def test_reminder_says_when_the_public_text_is_attached(db, spool, settings):
    create(db, "CVE-2026-12", LIFT)
    with db.transaction() as s:
        advisories.set_public_text(s, "CVE-2026-12", "Public.\n", "cli:t")
    reminders.send_due_reminders(db, spool, settings, LIFT - timedelta(hours=40), K8S)
    [reminder] = reminder_messages(db)
    assert f"Public text: attached (8 characters); it goes to {PUBLIC} at the lift." in text_of(
        spool, reminder.id
    )


def test_missed_reminders_collapse_into_the_nearest_one(db, spool, settings):
    create(db, "CVE-2026-13", LIFT)
    late = LIFT - timedelta(minutes=20)  # the relay was down through the 48h reminder
    assert reminders.send_due_reminders(db, spool, settings, late, K8S) == ["CVE-2026-13:remind-1h"]
    assert reminders.send_due_reminders(db, spool, settings, late + timedelta(minutes=5), K8S) == []
    assert len(reminder_messages(db)) == 1


def test_moving_a_lift_brings_its_reminders_back(db, spool, settings):
    create(db, "CVE-2026-14", LIFT)
    reminders.send_due_reminders(db, spool, settings, LIFT - timedelta(hours=40), K8S)
    later = LIFT + timedelta(days=7)
    with db.transaction() as s:
        advisories.schedule(
            s, "CVE-2026-14", later, "cli:t", None, NO_RULES, LIFT - timedelta(hours=39)
        )
    sent = reminders.send_due_reminders(db, spool, settings, later - timedelta(hours=47), K8S)
    assert sent == ["CVE-2026-14:remind-48h"]


def test_missing_lift_time_warning_once_after_the_configured_age(db, spool, settings):
    create(db, "CVE-2026-15", None)
    assert reminders.send_due_reminders(db, spool, settings, NOW + timedelta(days=2), K8S) == []
    later = NOW + timedelta(days=3, minutes=1)
    assert reminders.send_due_reminders(db, spool, settings, later, K8S) == [
        "CVE-2026-15:missing-lift"
    ]
    assert reminders.send_due_reminders(db, spool, settings, later + timedelta(days=1), K8S) == []
    [warning] = notices_about(db, "CVE-2026-15")
    assert warning.subject == "[Test distributors] CVE-2026-15 has no lift time yet"
    text = text_of(spool, warning.id)
    assert "under embargo since 2026-11-24 10:00 UTC and still has no lift time (after 3d)" in text
    assert len(deliveries(db, warning.id)) == 3


def test_reminder_settings_are_validated():
    assert EmbargoSettings(reminders=["1h", "2d"]).reminders == (
        timedelta(days=2),
        timedelta(hours=1),
    )
    for bad in (["0h"], ["1h", "60m"]):
        with pytest.raises(ValidationError):
            EmbargoSettings(reminders=bad)


# What each copy says


def test_preface_and_protected_fields_name_the_time_in_utc_and_the_rules():
    advisory = Advisory(id="CVE-2026-16", title="t", state=AdvisoryState.EMBARGOED, lift_at=LIFT)
    preface = embargo_preface(
        advisory, "List rules: kubernetes-distributors.", security_contact=CONTACT
    )
    assert preface.startswith("EMBARGOED until 2026-12-03 16:00 UTC (advisory CVE-2026-16).\n")
    assert "within your team, on a need-to-know basis" in preface
    assert f"tell {CONTACT} at once: exactly what leaked and to whom" in preface
    assert preface.endswith("List rules: kubernetes-distributors.\n")
    assert protected_fields(advisory) == (
        ("X-Advisory", "CVE-2026-16"),
        ("X-Embargo-Until", "2026-12-03T16:00:00Z"),
    )
    unset = Advisory(id="ADV-2026-0001", title="", state=AdvisoryState.EMBARGOED, lift_at=None)
    assert "EMBARGOED until further notice" in embargo_preface(unset, security_contact=CONTACT)
    assert protected_fields(unset) == (("X-Advisory", "ADV-2026-0001"),)


# A member reads the notice


def test_member_decrypts_the_schedule_notice_sent_through_the_dispatcher(
    tmp_path, keys: KeyFactory
):
    home = RelayHome(tmp_path, keys)
    member = keys.make("distro-e2e", "security@distro-e2e.example")
    home.add_member(member)
    spool = Spool(home.db)
    create(home.db, "CVE-2026-17", LIFT)
    with home.db.transaction() as s:
        change = advisories.schedule(
            s, "CVE-2026-17", LIFT + timedelta(days=1), "cli:t", "QA", NO_RULES, NOW
        )
        embargo.notify_schedule_change(
            s, spool, home.settings, change.advisory, change.old, change.new, "QA"
        )
    dispatcher = Dispatcher(home.settings, home.db, spool, home.crypto)
    assert asyncio.run(dispatcher.run_once()) == 1
    [copy] = list(home.settings.delivery.outbox.glob("*.eml"))
    data = copy.read_bytes()
    assert b"New lift time" not in data  # nothing readable outside the encryption
    opened = OpenedCopy(home.client(member), data)
    assert opened.decrypted and opened.signer == home.list_fpr
    assert opened.root["Subject"].strip() == (
        "[Test distributors] CVE-2026-17: lift time moved to 2026-12-04 16:00 UTC"
    )
    assert "New lift time: 2026-12-04 16:00 UTC" in opened.text
    assert "Old lift time: 2026-12-03 16:00 UTC" in opened.text
    assert "Reason: QA" in opened.text

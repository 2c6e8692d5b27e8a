"""Advisory use-cases on the test database (SQLite or PostgreSQL): create, schedule, move, lift,
cancel, posts, policy."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import inspect, text

from relay.app import advisories, embargo
from relay.app.advisories import (
    AdvisoryClosed,
    AdvisoryError,
    EmbargoTimeUnreadable,
    ScheduleRefused,
    UnknownAdvisory,
)
from relay.core import config as relay_config
from relay.core.database import MIGRATIONS_DIR, Database
from relay.core.times import ACCEPTED_FORMS
from relay.model import AdvisoryState, AuditEvent
from relay.policy.timing import NO_RULES, load_policy
from relay.store.spool import Spool
from tests.support.relayhome import migrated_database, write_config

POLICIES = Path(__file__).resolve().parent.parent / "relay" / "policies"
K8S = load_policy(POLICIES / "kubernetes-distributors.toml")
OPENWALL = load_policy(POLICIES / "openwall-distros.toml")
NOW = datetime(2026, 11, 24, 10, 0, tzinfo=UTC)  # a Tuesday
GOOD_LIFT = datetime(2026, 12, 3, 16, 0, tzinfo=UTC)  # Thursday 16:00 UTC, 9 days later
ADMIN = "cli:alice"
FPR = "A" * 40


@pytest.fixture
def db(tmp_path: Path) -> Database:
    return migrated_database(tmp_path, relay_config.load(write_config(tmp_path)))


def audit_rows(db: Database, advisory_id: str) -> list[AuditEvent]:
    with db.transaction() as s:
        return advisories.history(s, advisory_id)


def test_create_with_the_srcs_id_records_who_and_when(db):
    with db.transaction() as s:
        change = advisories.create(s, "cve-2026-1234", "  Path   traversal ", None, ADMIN, K8S, NOW)
        assert change.created and change.old is None and change.new is None
        assert not change.moved
    with db.transaction() as s:
        advisory = advisories.get(s, "CVE-2026-1234")
        assert advisory.id == "CVE-2026-1234"  # CVE IDs are canonically upper-case
        assert (advisory.title, advisory.state, advisory.lift_at) == (
            "Path traversal",
            AdvisoryState.EMBARGOED,
            None,
        )
        assert (advisory.created_by, advisory.created_at) == (ADMIN, NOW)
        assert advisories.get(s, "cve-2026-1234").id == "CVE-2026-1234"
    [row] = audit_rows(db, "CVE-2026-1234")
    assert (row.actor, row.action, row.subject) == (
        ADMIN,
        "advisory.created",
        "advisory:CVE-2026-1234",
    )


def test_create_without_id_assigns_sequential_ids_per_year(db):
    with db.transaction() as s:
        first = advisories.create(s, None, "one", None, ADMIN, NO_RULES, NOW).advisory.id
        second = advisories.create(s, None, "two", None, ADMIN, NO_RULES, NOW).advisory.id
        next_year = advisories.create(s, None, "three", None, ADMIN, NO_RULES, NOW.replace(2027))
    assert (first, second, next_year.advisory.id) == (
        "ADV-2026-0001",
        "ADV-2026-0002",
        "ADV-2027-0001",
    )


def test_duplicate_and_malformed_ids_are_refused(db):
    with db.transaction() as s:
        advisories.create(s, "K8S-2026-0001", "t", None, ADMIN, NO_RULES, NOW)
    with db.transaction() as s, pytest.raises(AdvisoryError, match="exists already"):
        advisories.create(s, "k8s-2026-0001", "t", None, ADMIN, NO_RULES, NOW)
    with db.transaction() as s, pytest.raises(AdvisoryError, match="not a usable advisory ID"):
        advisories.create(s, "lift:me now", "t", None, ADMIN, NO_RULES, NOW)
    with db.transaction() as s, pytest.raises(UnknownAdvisory, match="no advisory 'NOPE-1'"):
        advisories.get(s, "NOPE-1")


def test_schedule_then_move_is_audited_with_old_new_and_reason(db):
    moved_to = GOOD_LIFT + timedelta(days=5)  # Tuesday 16:00
    with db.transaction() as s:
        advisories.create(s, "CVE-2026-1", "t", None, ADMIN, K8S, NOW)
        first = advisories.schedule(s, "CVE-2026-1", GOOD_LIFT, ADMIN, None, K8S, NOW)
        assert (first.old, first.new, first.moved, first.warnings) == (None, GOOD_LIFT, True, ())
    with db.transaction() as s:
        second = advisories.schedule(
            s,
            "CVE-2026-1",
            moved_to,
            "cli:bob",
            "patch needs a respin",
            K8S,
            NOW + timedelta(hours=1),
        )
        assert (second.old, second.new) == (GOOD_LIFT, moved_to)
        same = advisories.schedule(s, "CVE-2026-1", moved_to, "cli:bob", None, K8S, NOW)
        assert not same.moved
    _created, scheduled, moved = audit_rows(db, "CVE-2026-1")
    assert (scheduled.action, scheduled.detail["old"], scheduled.detail["new"]) == (
        "advisory.scheduled",
        None,
        GOOD_LIFT.isoformat(),
    )
    assert (moved.action, moved.actor) == ("advisory.moved", "cli:bob")
    assert moved.detail["old"] == GOOD_LIFT.isoformat()
    assert moved.detail["new"] == moved_to.isoformat()
    assert moved.detail["reason"] == "patch needs a respin"
    with db.transaction() as s:
        assert advisories.get(s, "CVE-2026-1").lift_at == moved_to


def test_moving_a_lift_into_the_past_is_refused_and_changes_nothing(db):
    with db.transaction() as s:
        advisories.create(s, "CVE-2026-2", "t", GOOD_LIFT, ADMIN, NO_RULES, NOW)
    with db.transaction() as s, pytest.raises(ScheduleRefused, match="not in the future"):
        advisories.schedule(s, "CVE-2026-2", NOW - timedelta(minutes=1), ADMIN, None, NO_RULES, NOW)
    with db.transaction() as s:
        assert advisories.get(s, "CVE-2026-2").lift_at == GOOD_LIFT
    assert [r.action for r in audit_rows(db, "CVE-2026-2")] == ["advisory.created"]


def test_a_lifted_advisory_can_no_longer_change(db, tmp_path):
    settings = relay_config.load(write_config(tmp_path))
    with db.transaction() as s:
        advisories.create(s, "CVE-2026-3", "t", GOOD_LIFT, ADMIN, NO_RULES, NOW)
    assert embargo.lift_due(db, Spool(db), settings, GOOD_LIFT) == ["CVE-2026-3"]
    with db.transaction() as s:
        with pytest.raises(
            AdvisoryClosed, match="CVE-2026-3 is already lifted at 2026-12-03 16:00"
        ):
            advisories.schedule(
                s, "CVE-2026-3", GOOD_LIFT + timedelta(days=1), ADMIN, None, NO_RULES, NOW
            )
        for change in (
            lambda: advisories.cancel(s, "CVE-2026-3", ADMIN, None),
            lambda: advisories.lift_now(s, "CVE-2026-3", ADMIN, None, GOOD_LIFT),
            lambda: advisories.set_public_text(s, "CVE-2026-3", "text", ADMIN),
        ):
            with pytest.raises(AdvisoryClosed):
                change()


def test_cancel_is_final_and_audited(db):
    with db.transaction() as s:
        advisories.create(s, "CVE-2026-4", "t", GOOD_LIFT, ADMIN, NO_RULES, NOW)
        advisories.cancel(s, "CVE-2026-4", "cli:carol", "not a vulnerability after all")
    with db.transaction() as s:
        assert advisories.get(s, "CVE-2026-4").state == AdvisoryState.CANCELLED
        with pytest.raises(AdvisoryClosed, match="was cancelled"):
            advisories.schedule(
                s, "CVE-2026-4", GOOD_LIFT + timedelta(days=1), ADMIN, None, NO_RULES, NOW
            )
    row = audit_rows(db, "CVE-2026-4")[-1]
    assert (row.action, row.actor, row.detail["old"], row.detail["new"]) == (
        "advisory.cancelled",
        "cli:carol",
        "embargoed",
        "cancelled",
    )
    assert row.detail["reason"] == "not a vulnerability after all"


def test_hard_policy_rule_refuses_and_soft_rules_warn(db):
    with db.transaction() as s, pytest.raises(ScheduleRefused, match="max_embargo") as refused:
        advisories.create(s, "CVE-2026-5", "t", NOW + timedelta(days=20), ADMIN, OPENWALL, NOW)
    assert any(v.hard and v.rule == "max_embargo" for v in refused.value.violations)
    with db.transaction() as s:
        assert advisories.find(s, "CVE-2026-5") is None
    friday_morning = datetime(2026, 12, 4, 9, 0, tzinfo=UTC)
    with db.transaction() as s:
        change = advisories.create(s, "CVE-2026-6", "t", friday_morning, ADMIN, K8S, NOW)
    assert {v.rule for v in change.warnings} == {"lift_time", "lift_weekdays"}
    assert not any(v.hard for v in change.warnings)
    [row] = audit_rows(db, "CVE-2026-6")
    assert any("Friday" in w for w in row.detail["warnings"])


def test_a_policy_that_requires_a_lift_time_refuses_an_advisory_without_one(db):
    with db.transaction() as s, pytest.raises(ScheduleRefused, match="tentative lift"):
        advisories.create(s, "CVE-2026-7", "t", None, ADMIN, OPENWALL, NOW)
    with db.transaction() as s:
        assert advisories.create(s, "CVE-2026-7", "t", None, ADMIN, K8S, NOW).warnings == ()


def test_lift_now_brings_the_lift_forward_and_records_the_reason(db):
    with db.transaction() as s:
        advisories.create(s, "CVE-2026-8", "t", GOOD_LIFT, ADMIN, NO_RULES, NOW)
        change = advisories.lift_now(s, "CVE-2026-8", ADMIN, "embargo broken on a forum", NOW)
        assert (change.old, change.new) == (GOOD_LIFT, NOW)
    row = audit_rows(db, "CVE-2026-8")[-1]
    assert (row.action, row.detail["reason"]) == (
        "advisory.lift_requested",
        "embargo broken on a forum",
    )


def test_public_text_marks_for_release_and_stays_out_of_the_audit_trail(db):
    with db.transaction() as s:
        advisories.create(s, "CVE-2026-9", "t", GOOD_LIFT, ADMIN, NO_RULES, NOW)
        with pytest.raises(AdvisoryError, match="empty"):
            advisories.set_public_text(s, "CVE-2026-9", "\n  \n", ADMIN)
        advisory = advisories.set_public_text(s, "CVE-2026-9", "SECRET DETAILS\r\n", ADMIN)
        assert (advisory.public_text, advisory.public_release) == ("SECRET DETAILS\n", True)
    row = audit_rows(db, "CVE-2026-9")[-1]
    assert row.action == "advisory.public_text"
    assert "SECRET" not in str(row.detail)


# From a signed post


def test_lift_time_of_a_post_counts_relative_times_from_the_signature():
    signed_at = NOW - timedelta(days=2)  # the post waited two days in a sending queue
    assert advisories.lift_time_of("X-Embargo-Until", "+10d", signed_at) == signed_at + timedelta(
        days=10
    )
    assert advisories.lift_time_of("X-Embargo-Until", "in 36h", signed_at) == (
        signed_at + timedelta(hours=36)
    )
    absolute = "2026-12-03 17:00 Europe/Berlin"
    assert advisories.lift_time_of("X-Embargo-Until", absolute, signed_at) == GOOD_LIFT
    assert advisories.lift_time_of("X-Embargo-Until", None, signed_at) is None


def test_a_new_advisory_without_a_title_is_titled_with_its_id(db):
    with db.transaction() as s:
        change = advisories.create(s, "CVE-2026-77", "", None, f"key:{FPR}", NO_RULES, NOW)
    assert change.advisory.title == "CVE-2026-77"
    assert change.advisory.created_by == f"key:{FPR}"


@pytest.mark.parametrize(
    "text", ["next tuesday", "2026-12-03 16:00", "2026-03-29 02:30 Europe/Berlin"]
)
def test_unreadable_embargo_time_in_a_post_is_rejected_with_the_accepted_forms(text):
    with pytest.raises(EmbargoTimeUnreadable) as caught:
        advisories.lift_time_of("X-Embargo-Until", text, NOW)
    assert caught.value.smtp_status == "5.6.0"
    assert caught.value.text == text
    assert ACCEPTED_FORMS in str(caught.value)
    assert str(caught.value).startswith("X-Embargo-Until: ")


def test_policy_path_resolves_against_the_config_folder(tmp_path):
    shutil.copy(POLICIES / "openwall-distros.toml", tmp_path / "distros.toml")
    extra = '[embargo]\npolicy = "distros.toml"\npublic_addresses = ["oss-security@example.com"]\n'
    settings = relay_config.load(write_config(tmp_path, extra=extra))
    assert settings.embargo.policy == tmp_path / "distros.toml"
    assert advisories.policy_for(settings).name == "openwall-distros"
    assert settings.embargo.reminders == (timedelta(hours=48), timedelta(hours=1))
    (tmp_path / "bare").mkdir()
    bare = relay_config.load(write_config(tmp_path / "bare"))
    assert bare.embargo.policy is None
    assert advisories.policy_for(bare) is NO_RULES


def test_migration_0002_downgrades_and_upgrades_with_data(db):
    with db.transaction() as s:
        advisories.create(s, "CVE-2026-20", "t", GOOD_LIFT, ADMIN, NO_RULES, NOW)
    with db.engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO messages (id, kind, received_at, mail_from, subject, size, sha256,"
                " advisory_id) VALUES ('m1', 'post', '2026-11-24', '', 's', 1, 'x', 'CVE-2026-20')"
            )
        )
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["engine"] = db.engine
    command.downgrade(config, "0001")
    assert "advisories" not in inspect(db.engine).get_table_names()
    with db.engine.connect() as conn:
        assert conn.execute(text("SELECT id FROM messages")).scalars().all() == ["m1"]
        if conn.dialect.name == "sqlite":  # PostgreSQL has no switch: it always enforces them
            # The downgrade turned foreign keys off on a connection it closed, not this one.
            assert conn.execute(text("PRAGMA foreign_keys")).scalar() == 1
    command.upgrade(config, "head")
    assert db.is_current()
    with db.engine.connect() as conn:
        assert conn.execute(text("SELECT advisory_id FROM messages")).scalar() is None

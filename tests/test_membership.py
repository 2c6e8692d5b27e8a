"""The member state machine, members' records and the groups-file sync: real SQLite, real
gpg, the real groups file."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest
from sqlalchemy import func, select

from relay.app import groups_file, members, membership
from relay.app.membership import Move
from relay.core.errors import RelayError
from relay.model import AuditEvent, Delivery, DeliveryStatus, Member, MemberState, Message
from relay.runners.dispatcher import Dispatcher
from relay.store import notices
from relay.store.spool import PAYLOAD, Spool
from tests.support.keys import KeyFactory
from tests.support.relayhome import CONTACT, RelayHome

GROUPS = Path(__file__).resolve().parent / "data" / "groups" / "k8s-groups.yaml"
IN_FILE = "secalert@redhat.com"  # a member of distributors-announce in the real file
NOT_IN_FILE = "security@old-distro.example"


@pytest.fixture
def home(tmp_path: Path, keys: KeyFactory) -> RelayHome:
    return RelayHome(tmp_path, keys)


def add(home: RelayHome, keys: KeyFactory, address: str) -> None:
    key = keys.make(address.replace("@", "-at-"), address)
    members.add_member(home.db, home.crypto, home.settings, address, address, key.public, "t")


def notice_to_members(home: RelayHome) -> str:
    """A list notice queued to every active member, as the embargo notices are."""
    with home.db.transaction() as s:
        message_id, _ = notices.enqueue_list_notice(
            s,
            Spool(home.db),
            subject="s",
            text="t",
            list_domain="example.org",
            reason="test",
        )
    return message_id


def statuses(home: RelayHome, address: str) -> list[tuple[str, str | None]]:
    with home.db.transaction() as s:
        rows = s.execute(
            select(Delivery.status, Delivery.last_code)
            .where(Delivery.recipient == address)
            .order_by(Delivery.id)
        )
        return [tuple(r) for r in rows]  # type: ignore[misc]


def audit(home: RelayHome, action: str) -> list[AuditEvent]:
    with home.db.transaction() as s:
        query = select(AuditEvent).where(AuditEvent.action == action).order_by(AuditEvent.id)
        return list(s.execute(query).scalars())


# State


def test_suspend_stops_queued_deliveries_at_once_and_resume_does_not_revive_them(
    home: RelayHome, keys: KeyFactory
) -> None:
    add(home, keys, "security@distro-a.example")
    add(home, keys, "security@distro-b.example")
    notice_to_members(home)

    change = membership.change_state(
        home.db, "Security@Distro-A.example", "suspend", "cli:t", "missed two audits"
    )
    assert (change.old, change.new, change.cancelled) == ("active", "suspended", 1)
    assert statuses(home, "security@distro-a.example") == [("failed", "cancelled")]
    assert statuses(home, "security@distro-b.example") == [("queued", None)]
    [row] = audit(home, "member.suspended")
    assert row.subject == "security@distro-a.example"
    assert row.detail == {
        "old": "active",
        "new": "suspended",
        "reason": "missed two audits",
        "cancelled": 1,
    }

    notice_to_members(home)  # a suspended member gets nothing new either
    assert len(statuses(home, "security@distro-a.example")) == 1

    membership.change_state(home.db, "security@distro-a.example", "resume", "cli:t", "fixed")
    assert statuses(home, "security@distro-a.example") == [("failed", "cancelled")]
    notice_to_members(home)
    assert statuses(home, "security@distro-a.example")[-1] == ("queued", None)
    [row] = audit(home, "member.resumed")
    assert (row.detail["old"], row.detail["new"]) == ("suspended", "active")


def test_state_changes_refused_where_they_make_no_sense(home: RelayHome, keys: KeyFactory) -> None:
    add(home, keys, "security@distro-c.example")
    with pytest.raises(RelayError, match="already active"):
        membership.change_state(home.db, "security@distro-c.example", "resume", "t", "r")
    with pytest.raises(RelayError, match="give a reason"):
        membership.change_state(home.db, "security@distro-c.example", "suspend", "t", "  ")
    with pytest.raises(RelayError, match="no member"):
        membership.change_state(home.db, "nobody@distro-c.example", "suspend", "t", "r")
    membership.change_state(home.db, "security@distro-c.example", "suspend", "t", "r")
    membership.change_state(home.db, "security@distro-c.example", "remove", "t", "left")
    with pytest.raises(RelayError, match="relay member add"):
        membership.change_state(home.db, "security@distro-c.example", "resume", "t", "r")
    [removed] = audit(home, "member.removed")
    assert (removed.detail["old"], removed.detail["new"]) == ("suspended", "removed")


def test_a_move_is_made_only_from_the_states_its_transition_names(home: RelayHome) -> None:
    with home.db.transaction() as s:
        for state in MemberState:
            for move in Move:
                s.add(Member(address=f"{move}@{state}.example", name="M", state=state))
    for state in [None, *MemberState]:
        for move in Move:
            address = f"{move}@{state or 'new'}.example"
            rule = membership.TRANSITIONS[move]
            try:
                with home.db.transaction() as s:
                    change = membership.transition(s, address, move, "t", reason="r")
            except RelayError:
                assert state not in rule.sources, (move, state)
                continue
            assert state in rule.sources, (move, state)
            assert (change.old, change.new) == (state, rule.standing)
            [row] = [r for r in audit(home, rule.action) if r.subject == address]
            assert (row.detail["old"], row.detail["new"]) == (state, rule.standing)
    with home.db.transaction() as s:
        states = {m.address: m.state for m in s.execute(select(Member)).scalars()}
    assert states["suspend@active.example"] == "suspended"
    assert states["remove@suspended.example"] == "removed"
    assert states["add@new.example"] == states["restore@removed.example"] == "active"
    assert states["resume@active.example"] == "active"  # refused: unchanged
    assert states["bounce@active.example"] == "active"  # and marked bouncing


def test_member_detail_shows_keys_organisation_and_history(
    home: RelayHome, keys: KeyFactory
) -> None:
    add(home, keys, "security@distro-d.example")
    add(home, keys, "security@distro-e.example")
    view = members.update_member(
        home.db,
        home.crypto,
        "security@distro-d.example",
        "cli:t",
        name="Distro D",
        domains=["Distro-D.example", "distro-d.example.", "d.example"],
        vouched_by="security@distro-e.example",
    )
    assert (view.name, view.domains) == ("Distro D", ["d.example", "distro-d.example"])
    assert view.vouched_by == "security@distro-e.example"
    with pytest.raises(RelayError, match="not a domain"):
        members.update_member(
            home.db, home.crypto, "security@distro-d.example", "t", domains=["bad domain"]
        )
    with pytest.raises(RelayError, match="itself"):
        members.update_member(
            home.db,
            home.crypto,
            "security@distro-d.example",
            "t",
            vouched_by="security@distro-d.example",
        )
    membership.change_state(home.db, "security@distro-d.example", "suspend", "cli:t", "audit")

    detail = members.member_detail(home.db, home.crypto, "security@distro-d.example")
    [key] = detail.keys
    assert (key.status, key.expires_at) == ("usable", None)
    assert [h.action for h in detail.history] == [
        "member.added",
        "key.imported",
        "member.updated",
        "member.suspended",
    ]
    assert detail.history[2].new["name"] == "Distro D"
    assert detail.history[3].reason == "audit"


# Reading the groups file


def test_read_group_from_the_real_groups_file() -> None:
    group = groups_file.read_group(GROUPS.read_bytes(), "distributors-announce")
    assert group.email_id == "distributors-announce@kubernetes.io"
    assert group.reconcile is True
    assert len(group.members) == 29
    assert IN_FILE in group.members
    assert "vmware.psirt@broadcom.com" in group.members  # addresses compare lower-case
    assert "release-managers-private@kubernetes.io" in group.members  # a list as a member
    assert "cjcullen@google.com" not in group.members  # owners are not members
    by_email = groups_file.read_group(GROUPS.read_text(), "distributors-announce@kubernetes.io")
    assert by_email == group
    assert groups_file.read_group(GROUPS.read_bytes(), "security").members == []


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("groups:\n  - name: x\n    members: [a@b.example\n", "not valid YAML at line"),
        ("just: a mapping\n", "no 'groups:' list"),
        ("groups:\n  - name: other\n    members: []\n", "no group 'distributors-announce'"),
        (
            "groups:\n  - name: distributors-announce\n    members:\n"
            "      - ok@distro.example\n      - not an address\n      - 42\n",
            "not email addresses: 'not an address', 42",
        ),
        (
            "groups:\n  - name: distributors-announce\n    members: a@b.example\n",
            "'members' is not a list",
        ),
        (
            "groups:\n  - name: distributors-announce\n    members: [distributors@example.org]\n",
            "the list's own address",
        ),
    ],
)
def test_a_bad_groups_file_is_refused_with_a_clear_message(text: str, message: str) -> None:
    with pytest.raises(RelayError, match=re.escape(message)):
        groups_file.read_group(text, "distributors-announce", "distributors@example.org")


# Syncing


def test_dry_run_shows_the_difference_and_changes_nothing(
    home: RelayHome, keys: KeyFactory
) -> None:
    add(home, keys, IN_FILE)
    add(home, keys, NOT_IN_FILE)
    group = groups_file.read_group(GROUPS.read_bytes(), "distributors-announce")
    plan = groups_file.plan_sync(home.db, group)
    assert len(plan.added) == 28 and IN_FILE not in plan.added
    assert (plan.removed, plan.unchanged, plan.restored) == ([NOT_IN_FILE], [IN_FILE], [])
    assert not plan.applied
    with home.db.transaction() as s:
        assert s.scalar(select(func.count()).select_from(Member)) == 2
    assert audit(home, "members.synced") == []


def test_apply_adds_keyless_members_as_unreachable_tells_the_contact_and_removes_the_rest(
    home: RelayHome, keys: KeyFactory
) -> None:
    add(home, keys, IN_FILE)
    add(home, keys, NOT_IN_FILE)
    notice_to_members(home)  # queued for both before the sync
    group = groups_file.read_group(GROUPS.read_bytes(), "distributors-announce")

    done = groups_file.apply_sync(
        home.db,
        Spool(home.db),
        home.crypto,
        home.settings,
        group,
        "cli:t",
        str(GROUPS),
    )
    assert done.applied and len(done.added) == 28 and done.removed == [NOT_IN_FILE]
    assert sorted(done.unreachable) == sorted(done.added)
    assert statuses(home, NOT_IN_FILE) == [("failed", "cancelled")]
    listed = {m.address: m for m in members.list_members(home.db, home.crypto)}
    assert set(listed) == set(group.members)
    new = listed["security@ubuntu.com"]
    assert (new.state, new.usable, new.problem) == ("active", False, "no key on file")
    assert new.domains == ["ubuntu.com"]
    assert listed[IN_FILE].usable

    # The security contact is told which members need a key (a notice quoting nothing).
    with home.db.transaction() as s:
        message = s.get_one(Message, done.notice)
        [delivery] = message.deliveries
        assert (delivery.recipient, delivery.plaintext_allowed) == (CONTACT, True)
    text = Spool(home.db).read(done.notice, PAYLOAD).decode()
    assert "security@ubuntu.com" in text and "relay key import" in text

    [synced] = audit(home, "members.synced")
    assert synced.subject == "distributors-announce@kubernetes.io"
    assert synced.detail["removed"] == [NOT_IN_FILE] and synced.detail["reconcile"] is True
    assert len(audit(home, "member.added")) == 2 + 28
    [removed] = audit(home, "member.removed")
    assert "ReconcileMembers" in removed.detail["reason"]

    # A second run finds nothing to do and tells nobody again.
    again = groups_file.apply_sync(
        home.db, Spool(home.db), home.crypto, home.settings, group, "t", "f"
    )
    assert (again.changes, again.notice, len(again.unchanged)) == (0, None, 29)


def test_copies_to_a_member_from_the_file_are_held_until_its_key_is_imported(
    home: RelayHome, keys: KeyFactory
) -> None:
    text = (
        "groups:\n  - email-id: distributors-announce@kubernetes.io\n"
        "    name: distributors-announce\n    members:\n      - security@distro-f.example\n"
    )
    group = groups_file.read_group(text, "distributors-announce")
    spool = Spool(home.db)
    groups_file.apply_sync(home.db, spool, home.crypto, home.settings, group, "t", "inline")
    message_id = notice_to_members(home)
    dispatcher = Dispatcher(home.settings, home.db, spool, home.crypto)
    asyncio.run(dispatcher.run_once())
    assert statuses(home, "security@distro-f.example") == [("held", "held")]
    outbox = home.settings.delivery.outbox
    assert outbox is not None
    assert [p.name for p in outbox.glob("*--security@distro-f.example--*")] == []

    key = keys.make("distro-f", "security@distro-f.example")
    done = members.add_member_keys(
        home.db, home.crypto, "security@distro-f.example", key.public, "t"
    )
    assert done.released == 1 and done.member.usable
    asyncio.run(Dispatcher(home.settings, home.db, spool, home.crypto).run_once())
    with home.db.transaction() as s:
        delivery = s.execute(
            select(Delivery).where(
                Delivery.message_id == message_id,
                Delivery.recipient == "security@distro-f.example",
            )
        ).scalar_one()
        assert delivery.status == DeliveryStatus.SENT
        assert delivery.fingerprints == [key.fingerprint]
    [copy] = outbox.glob("*--security@distro-f.example--*")
    assert b"BEGIN PGP MESSAGE" in copy.read_bytes()


def test_without_reconcile_members_missing_from_the_file_stay(
    home: RelayHome, keys: KeyFactory
) -> None:
    add(home, keys, NOT_IN_FILE)
    add(home, keys, IN_FILE)
    membership.change_state(home.db, IN_FILE, "remove", "t", "left")
    text = GROUPS.read_text().replace('ReconcileMembers: "true"', 'ReconcileMembers: "false"', 1)
    group = groups_file.read_group(text, "distributors-announce")
    assert group.reconcile is False
    done = groups_file.apply_sync(
        home.db, Spool(home.db), home.crypto, home.settings, group, "t", "f"
    )
    assert (done.removed, done.kept, done.restored) == ([], [NOT_IN_FILE], [IN_FILE])
    listed = {m.address: m for m in members.list_members(home.db, home.crypto)}
    assert listed[NOT_IN_FILE].state == "active"
    assert (listed[IN_FILE].state, listed[IN_FILE].usable) == ("active", True)  # kept its key
    assert IN_FILE not in done.unreachable

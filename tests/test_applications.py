"""Applications to join the list: reading the template, vouches, approval and rejection,
through the real CLI on a real database, keyring and spool."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import select, text
from sqlalchemy.exc import IntegrityError

from relay.app import admin, advisories, applications, approval
from relay.app.application_form import parse_application
from relay.cli.root import cli
from relay.core.errors import RelayError
from relay.model import (
    Application,
    AuditEvent,
    Delivery,
    DeliveryStatus,
    HoldReason,
    Member,
    MemberKey,
    Message,
)
from relay.policy.timing import NO_RULES
from relay.store import incoming, moderation
from relay.store.spool import Spool
from tests.support.cli import CliRelay, set_up
from tests.support.keys import KeyFactory
from tests.support.relayhome import CONTACT

DATA = Path(__file__).resolve().parent / "data" / "applications"
COMPLETE, INCOMPLETE = DATA / "complete.md", DATA / "incomplete.md"
NEW = "security-response@larchwood.example"
A, S = "security@distro-a.example", "security@distro-s.example"  # active, suspended


# Reading the template


def test_complete_sample_answers_every_criterion_with_its_evidence() -> None:
    parsed = parse_application(COMPLETE.read_text())
    assert parsed.distribution == "Larchwood Kubernetes Engine"
    assert parsed.alias == NEW
    assert (parsed.answered, parsed.missing) == ([str(n) for n in range(9)], [])
    assert parsed.answers["1"].splitlines()[1:] == [
        "- https://github.com/cncf/k8s-conformance/tree/master/v1.30/larchwood-lke",
        "- https://github.com/cncf/k8s-conformance/tree/master/v1.31/larchwood-lke",
    ]
    assert parsed.answers["6"] == "We accept the embargo policy."  # the template's comment is gone
    assert "security@distro-a.example" in parsed.answers["8"]


def test_incomplete_sample_names_exactly_what_is_missing() -> None:
    parsed = parse_application(INCOMPLETE.read_text())
    assert parsed.distribution == "Quillfeather K8s"
    assert parsed.alias == "psirt@quillfeather.example"  # from a mailto link, after "- "
    assert parsed.answered == ["0", "1", "3", "5", "6"]
    assert parsed.missing == ["2", "4", "7", "8"]  # N/A, TBD, "-", empty
    assert parsed.answers["2"] == "N/A"
    # A bold phrase inside an answer is not a prompt, even one starting with a number.
    assert "**1.30 patch**" in parsed.answers["3"]


@pytest.mark.parametrize(
    ("prompt", "criterion"),
    [
        ("**1. Be an actively maintained and CNCF certified distribution.**", "1"),
        ("**Criterion 2**", "2"),
        ("**criteria 3:**", "3"),
        ("__4)__", "4"),
        ("* **Are you active in the community?**", "5"),
        ("1. **Do you accept the embargo policy?**", "6"),
        ("### Willing to contribute back", "7"),
        ("**Who will vouch for you?**", "8"),
        ("**Security email alias:**", "0"),
    ],
)
def test_prompts_are_recognised_by_number_or_key_words(prompt: str, criterion: str) -> None:
    parsed = parse_application(f"# Distributors Application for X\n\n{prompt}\nThe answer.\n")
    assert parsed.answers == {criterion: "The answer."}


def test_inline_answers_front_matter_and_what_is_not_a_prompt() -> None:
    text = (
        "---\ntitle: Distributors Application for Fir OS\n---\n"
        "**Alias:** Sec@Fir.Example\n"
        "**1.30 patch**\n"  # a version, not criterion 1
        "**Community and embargo**\n"  # names two criteria: not a prompt either
        "**Note:** nothing\n"
    )
    parsed = parse_application(text)
    assert (parsed.distribution, parsed.alias) == ("Fir OS", "sec@fir.example")
    assert list(parsed.answers) == ["0"]
    assert parsed.answers["0"].endswith("**Note:** nothing")
    assert (
        parse_application("# Distributors Application for <YOUR DISTRIBUTION HERE>\n").distribution
        is None
    )
    assert "0" in parse_application("**Security email alias:** our PSIRT\n").missing


# The commands


class Relay(CliRelay):
    def actions(self) -> list[str]:
        with self.db.transaction() as s:
            query = select(AuditEvent.action).where(AuditEvent.subject.startswith("application:"))
            return list(s.execute(query.order_by(AuditEvent.id)).scalars())


@pytest.fixture
def relay(tmp_path: Path, keys: KeyFactory) -> Iterator[Relay]:
    home = set_up(
        tmp_path,
        keys,
        [(f"app-{a.split('@')[1].split('.')[0]}", a, a) for a in (A, S)],
        kind=Relay,
    )
    yield home
    home.db.dispose()


def _suspend(relay: Relay) -> None:
    relay("member", "suspend", S, "--reason", "no answer for months")


def test_commands_have_help() -> None:
    for verb in ["submit", "vouch", "approve", "reject", "list", "show"]:
        result = CliRunner().invoke(cli, ["application", verb, "--help"])
        assert result.exit_code == 0 and "Usage: " in result.stdout, verb


def test_submit_shows_missing_criteria_and_approval_is_refused_until_complete(
    relay: Relay,
) -> None:
    out = relay("application", "submit", str(INCOMPLETE)).stdout
    assert "application 1 submitted: Quillfeather K8s (psirt@quillfeather.example)" in out
    assert "answered:   0, 1, 3, 5, 6" in out
    assert "  4. not a downstream or rebuild of another distribution" in out
    relay("application", "vouch", "1", "--by", A)
    members = relay.count(Member)

    err = relay("application", "approve", "1", code=1).stderr
    assert "criteria not answered: 2 (a user base" in err and "8 (someone" in err
    assert "no vouch" not in err
    assert relay.count(Member) == members
    shown = relay.json("application", "show", "1")
    assert (shown["state"], shown["missing"]) == ("submitted", ["2", "4", "7", "8"])
    assert shown["missing_criteria"]["7"] == "willing to contribute back"
    assert [h["action"] for h in shown["history"]] == [
        "application.submitted",
        "application.vouched",
    ]
    # A second application for the same alias waits for this one's decision.
    assert (
        "application 1 for psirt@quillfeather.example is still open"
        in relay("application", "submit", str(INCOMPLETE), code=1).stderr
    )


def test_approval_needs_a_vouch_from_an_active_member(relay: Relay) -> None:
    submitted = relay.json("application", "submit", str(COMPLETE))
    assert (submitted["id"], submitted["missing"], submitted["vouches"]) == (1, [], [])
    err = relay("application", "approve", "1", code=1).stderr
    assert "no vouch from an active member" in err and "relay application vouch 1" in err

    _suspend(relay)
    assert (
        "is suspended; only active members may vouch"
        in relay("application", "vouch", "1", "--by", S, code=1).stderr
    )
    assert (
        "no member 'who@nowhere.example'"
        in relay("application", "vouch", "1", "--by", "who@nowhere.example", code=1).stderr
    )
    assert "no application 9" in relay("application", "vouch", "9", "--by", A, code=1).stderr
    relay("application", "approve", "1", code=1)
    with relay.db.transaction() as s:
        assert s.scalar(select(Member).where(Member.address == NEW)) is None
        assert s.get_one(Application, 1).vouches == []

    assert (
        "vouch by security@distro-a.example recorded"
        in relay("application", "vouch", "1", "--by", "Security@Distro-A.example").stdout
    )
    assert "had already vouched" in relay("application", "vouch", "1", "--by", A).stdout
    assert relay.actions() == ["application.submitted", "application.vouched"]


def test_vouch_by_signed_mail_uses_the_same_rules(relay: Relay) -> None:
    relay("application", "submit", str(COMPLETE))
    _suspend(relay)
    with relay.db.transaction() as s:
        done = applications.vouch(s, "#1", A, "mail:" + "F" * 40)
    assert (done.application_id, done.member, done.vouches, done.changed) == (1, A, 1, True)
    with (
        pytest.raises(applications.ApplicationError, match="suspended"),
        relay.db.transaction() as s,
    ):
        applications.vouch(s, "1", S, "mail:x")
    with pytest.raises(RelayError, match="not an application id"), relay.db.transaction() as s:
        applications.vouch(s, "ADV-1", A, "mail:x")
    shown = relay.json("application", "show", "1")
    assert [(v["member"], v["actor"]) for v in shown["vouches"]] == [(A, "mail:" + "F" * 40)]


def _advisory_with_post(
    relay: Relay,
    advisory_id: str,
    audience: str = incoming.MEMBERS,
    hold: HoldReason | None = None,
) -> str:
    now = datetime.now(UTC)
    with relay.db.transaction() as s:
        if advisories.find(s, advisory_id) is None:
            advisories.create(
                s, advisory_id, "Proxy bypass", now + timedelta(days=7), "t", NO_RULES, now
            )
    return incoming.accept_post(
        relay.db,
        Spool(relay.db),
        incoming.Post(
            b"raw\r\n",
            b"payload\r\n",
            f"[EMBARGOED] {advisory_id}: proxy bypass",
            "src@example.org",
            "F" * 40,
            None,
        ),
        list_domain="example.org",
        route=lambda session, spool, message_id: incoming.Routing(advisory_id, audience, hold),
    ).message_id


def test_approve_with_key_and_send_active_queues_the_embargoed_posts(
    relay: Relay, keys: KeyFactory
) -> None:
    embargoed = _advisory_with_post(relay, "CVE-2026-3001")
    src_only = _advisory_with_post(relay, "CVE-2026-3001", incoming.SENDERS)
    lifted = _advisory_with_post(relay, "CVE-2026-3002")
    relay("advisory", "lift", "CVE-2026-3002", "--reason", "fixed upstream")
    relay("application", "submit", str(COMPLETE))
    relay("application", "vouch", "1", "--by", A)
    key = keys.make("larchwood", NEW)

    out = relay(
        "application", "approve", "1", "--key", str(key.public_file), "--send-active"
    ).stdout
    assert f"application 1 approved: member {NEW} added" in out
    assert "CVE-2026-3001: 1 embargoed post(s) queued" in out
    assert "no usable key" not in out and "CVE-2026-3002" not in out

    member = relay.json("member", "show", NEW)
    assert (member["state"], member["usable"], member["name"]) == (
        "active",
        True,
        "Larchwood Kubernetes Engine",
    )
    assert [k["fingerprint"] for k in member["keys"]] == [key.fingerprint]
    assert (member["vouched_by"], member["domains"]) == (A, ["larchwood.example"])
    assert sorted(member["criteria"]) == [str(n) for n in range(9)]
    with relay.db.transaction() as s:
        new_id = s.execute(select(Member.id).where(Member.address == NEW)).scalar_one()
        copies = s.execute(select(Delivery).where(Delivery.recipient == NEW)).scalars().all()
        assert [(d.message_id, d.advisory_id, d.member_id, d.status) for d in copies] == [
            (embargoed, "CVE-2026-3001", new_id, DeliveryStatus.QUEUED)
        ]
        assert not copies[0].plaintext_allowed
        assert copies[0].copy_message_id.endswith("@example.org>")
        assert {lifted, src_only} <= set(s.execute(select(Message.id)).scalars())
        sent_row = s.execute(
            select(AuditEvent).where(AuditEvent.action == "advisory.sent_to_new_member")
        ).scalar_one()
        assert (sent_row.subject, sent_row.detail) == (
            "advisory:CVE-2026-3001",
            {"member": NEW, "messages": [embargoed]},
        )
    assert relay.actions() == [
        "application.submitted",
        "application.vouched",
        "application.approved",
    ]
    shown = relay.json("application", "show", "1")
    assert shown["state"] == "approved" and shown["decided_by"].startswith("cli:")
    assert shown["history"][-1]["detail"]["sent_embargoed"] == {"CVE-2026-3001": 1}
    assert "already approved" in relay("application", "reject", "1", "--reason", "x", code=1).stderr


def test_approve_without_key_adds_an_unreachable_member_and_tells_the_contact(
    relay: Relay,
) -> None:
    post = _advisory_with_post(relay, "CVE-2026-3003")
    relay("application", "submit", str(COMPLETE))
    relay("application", "vouch", "1", "--by", A)
    out = relay("application", "approve", "1", "--send-active").stdout
    assert f"{NEW} has no usable key: nothing is sent to it until 'relay key import" in out
    member = relay.json("member", "show", NEW)
    assert (member["state"], member["usable"], member["keys"]) == ("active", False, [])
    with relay.db.transaction() as s:
        copy = s.execute(select(Delivery).where(Delivery.recipient == NEW)).scalar_one()
        assert (copy.message_id, copy.plaintext_allowed) == (post, False)
        notice = s.execute(select(Delivery).where(Delivery.recipient == CONTACT)).scalar_one()
        assert "without a usable key" in notice.message.subject


# A trigger that refuses an application's move to approved, as a constraint would: SQLite's
# RAISE(ABORT) and PostgreSQL's integrity_constraint_violation both surface as IntegrityError.
_REFUSE_APPROVAL = {
    "sqlite": [
        "CREATE TRIGGER refuse_approval BEFORE UPDATE OF state ON applications"
        " WHEN NEW.state = 'approved' BEGIN SELECT RAISE(ABORT, 'no approval'); END"
    ],
    "postgresql": [
        "CREATE FUNCTION refuse_approval() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
        " RAISE EXCEPTION 'no approval' USING ERRCODE = 'integrity_constraint_violation';"
        " END $$",
        "CREATE TRIGGER refuse_approval BEFORE UPDATE OF state ON applications FOR EACH ROW"
        " WHEN (NEW.state = 'approved') EXECUTE FUNCTION refuse_approval()",
    ],
}
_ALLOW_APPROVAL = {
    "sqlite": "DROP TRIGGER refuse_approval",
    "postgresql": "DROP FUNCTION refuse_approval() CASCADE",  # and its trigger
}


def test_a_failure_after_the_member_is_added_leaves_neither_member_nor_approval(
    relay: Relay, keys: KeyFactory
) -> None:
    post = _advisory_with_post(relay, "CVE-2026-3004")
    relay("application", "submit", str(COMPLETE))
    relay("application", "vouch", "1", "--by", A)
    key = keys.make("larchwood", NEW)
    # The database itself refuses the last step, the application's new state: the member,
    # its key, its backlog and their audit rows were written before it, in the same try.
    with relay.db.engine.begin() as conn:
        for statement in _REFUSE_APPROVAL[conn.dialect.name]:
            conn.execute(text(statement))
    before = relay.count(AuditEvent)
    with pytest.raises(IntegrityError, match="no approval"):
        approval.approve(
            relay.db,
            admin.open_keyring(relay.settings),
            relay.settings,
            Spool(relay.db),
            1,
            "cli:test",
            key_data=key.public,
            send_active=True,
        )
    with relay.db.transaction() as s:
        assert s.scalar(select(Member).where(Member.address == NEW)) is None
        assert s.scalar(select(MemberKey).where(MemberKey.fingerprint == key.fingerprint)) is None
        assert s.execute(select(Delivery).where(Delivery.recipient == NEW)).first() is None
        assert s.get_one(Application, 1).state == "submitted"
    assert relay.count(AuditEvent) == before

    with relay.db.engine.begin() as conn:
        conn.execute(text(_ALLOW_APPROVAL[conn.dialect.name]))
    out = relay("application", "approve", "1", "--key", str(key.public_file), "--send-active")
    assert "CVE-2026-3004: 1 embargoed post(s) queued" in out.stdout
    with relay.db.transaction() as s:
        copy = s.execute(select(Delivery).where(Delivery.recipient == NEW)).scalar_one()
        assert (copy.message_id, copy.status) == (post, DeliveryStatus.QUEUED)


def test_the_backlog_holds_a_post_held_for_moderation_and_skips_one_refused(
    relay: Relay,
) -> None:
    queued = _advisory_with_post(relay, "CVE-2026-3005")
    held = _advisory_with_post(relay, "CVE-2026-3005", hold=HoldReason.MODERATION)
    refused = _advisory_with_post(relay, "CVE-2026-3005", hold=HoldReason.MODERATION)
    with relay.db.transaction() as s:
        moderation.moderate(s, refused, "cli:test", release=False, reason="off topic")
    relay("application", "submit", str(COMPLETE))
    relay("application", "vouch", "1", "--by", A)
    out = relay("application", "approve", "1", "--send-active").stdout
    assert "CVE-2026-3005: 2 embargoed post(s) queued" in out
    with relay.db.transaction() as s:
        copies = s.execute(
            select(Delivery.message_id, Delivery.status, Delivery.hold_reason)
            .where(Delivery.recipient == NEW)
            .order_by(Delivery.id)
        ).all()
        assert [tuple(c) for c in copies] == [
            (queued, DeliveryStatus.QUEUED, None),
            (held, DeliveryStatus.HELD, HoldReason.MODERATION),  # the moderator decides
        ]
        # Released, the post reaches the new member with everyone else.
        assert moderation.moderate(s, held, "cli:test", release=True, reason="") == 3


def test_a_bad_key_refuses_the_approval_and_changes_nothing(relay: Relay, keys: KeyFactory) -> None:
    relay("application", "submit", str(COMPLETE))
    relay("application", "vouch", "1", "--by", A)
    weak = keys.make("larchwood-weak", NEW, kind="rsa1024")
    err = relay("application", "approve", "1", "--key", str(weak.public_file), code=1).stderr
    assert "too weak" in err
    assert relay.json("application", "show", "1")["state"] == "submitted"
    with relay.db.transaction() as s:
        assert s.scalar(select(Member).where(Member.address == NEW)) is None


def test_reject_list_and_show(relay: Relay) -> None:
    relay("application", "submit", str(INCOMPLETE))
    relay("application", "submit", str(COMPLETE))
    assert "--reason" in relay("application", "reject", "1", code=2).stderr
    assert (
        "application 1 rejected"
        in relay(
            "application", "reject", "1", "--reason", "a rebuild of another distribution"
        ).stdout
    )
    assert "already rejected" in relay("application", "vouch", "1", "--by", A, code=1).stderr
    assert "already rejected" in relay("application", "approve", "1", code=1).stderr

    listed = relay.json("application", "list")
    assert [(a["id"], a["state"], a["missing"]) for a in listed] == [
        (2, "submitted", []),
        (1, "rejected", ["2", "4", "7", "8"]),
    ]
    text = relay("application", "list").stdout
    assert "Larchwood Kubernetes Engine" in text and "2, 4, 7, 8" in text
    shown = relay("application", "show", "1").stdout
    assert "a rebuild of another distribution" in shown and "(rejected)" in shown
    assert "https://quillfeather.example/security" in shown
    history = relay.json("application", "show", "1")["history"]
    assert (history[-1]["action"], history[-1]["old"], history[-1]["new"]) == (
        "application.rejected",
        "submitted",
        "rejected",
    )
    assert relay.count(Application) == 2


def test_submit_refuses_what_is_not_an_application(relay: Relay, tmp_path: Path) -> None:
    untitled = tmp_path / "untitled.md"
    untitled.write_text("**1. CNCF certified**\nyes\n")
    assert (
        "no heading naming the distribution"
        in relay("application", "submit", str(untitled), code=1).stderr
    )
    member = tmp_path / "member.md"
    member.write_text(f"# Distributors Application for A\n**Security alias:** {A}\n")
    assert "already a member (active)" in relay("application", "submit", str(member), code=1).stderr
    assert relay.count(Application) == 0


def test_migration_0004_downgrades_and_upgrades(relay: Relay) -> None:
    from alembic import command
    from alembic.config import Config
    from sqlalchemy import inspect

    from relay.core.database import MIGRATIONS_DIR

    relay("application", "submit", str(COMPLETE))
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["engine"] = relay.db.engine
    command.downgrade(config, "0003")
    assert "applications" not in inspect(relay.db.engine).get_table_names()
    command.upgrade(config, "head")
    assert relay.db.is_current() and relay.count(Application) == 0

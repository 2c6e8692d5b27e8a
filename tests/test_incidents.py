"""Incidents and leak reports: recorded against the member, reported to the security contact
encrypted to its key (decrypted here with the contact's own key), held when the contact has no
usable key, listed, resolved and reported from the command line, counted in `member list`.

Real parts throughout: gpg keys, SQLite, the dispatcher writing to an outbox or sending over
SMTP to a sink on 127.0.0.1, and the content matcher producing the evidence."""

from __future__ import annotations

import asyncio
import json
import textwrap
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import inspect, select, text

from relay.app import admin, advisories, incidents, leak_report, members
from relay.core.database import MIGRATIONS_DIR, Database
from relay.core.errors import RelayError
from relay.leaks.matcher import Match, Matcher
from relay.model import (
    AuditEvent,
    Delivery,
    DeliveryStatus,
    HoldReason,
    Incident,
    Member,
    Message,
)
from relay.runners.dispatcher import Dispatcher
from relay.store import delivery_queue, notices
from relay.store.spool import Spool
from tests.support import keys as test_keys
from tests.support.cli import CliRelay, set_up
from tests.support.keys import KeyFactory
from tests.support.mail import OpenedCopy
from tests.support.relayhome import CONTACT, RelayHome
from tests.support.smtpsink import SmtpSink

ADVISORY = "CVE-2026-4242"
TITLE = "kubelet: path traversal in projected volumes"
DISTRO = "security@distro-leak.example"
OUTSIDER = "press@news.example"
COLLEAGUE = "friend@vendor.example"
NOW = datetime(2026, 12, 1, 10, 0, tzinfo=UTC)
LIFT = NOW + timedelta(days=7)

ADVISORY_TEXT = """\
The kubelet follows symbolic links placed inside a projected volume when it refreshes the
volume's files, so a pod that can write to its own projected volume directory can make the
kubelet overwrite arbitrary files on the node with the contents of a service account token.
Clusters that allow untrusted workloads to mount projected volumes are affected; the fix makes
the kubelet open every path below the volume root with openat2 and RESOLVE_BENEATH, and refuses
to follow links that leave the volume. Distributors should rebuild the kubelet from the patched
release branch and ship node images before the public disclosure date.
"""

# What a member forwarded: two sentences of the advisory, quoted and re-wrapped.
FORWARD = (
    "FYI, see below, keep it quiet for now.\n\n"
    + "\n".join(
        "> " + line
        for line in textwrap.wrap(
            " ".join(ADVISORY_TEXT.split()[:70]),
            50,
        )
    )
    + "\n"
)


def match_of(text: str) -> Match:
    """The real matcher's evidence that `text` quotes the advisory."""
    matcher = Matcher()
    matcher.add(ADVISORY, ADVISORY_TEXT, subjects=[f"[EMBARGOED] {ADVISORY}: {TITLE}"])
    [found] = matcher.match(text)
    assert found.excerpts, found
    return found


@pytest.fixture
def contact(keys: KeyFactory) -> test_keys.TestKey:
    return keys.make("incident-contact", CONTACT)


def make_home(tmp_path: Path, keys: KeyFactory, **kwargs: str) -> RelayHome:
    home = RelayHome(tmp_path, keys, **kwargs)
    home.add_member(keys.make("distro-leak", DISTRO))
    with home.db.transaction() as s:
        advisories.create(s, ADVISORY, TITLE, LIFT, "cli:t", advisories.NO_RULES, NOW)
    return home


def leak(
    home: RelayHome,
    *,
    kind: str = "forward-flagged",
    match: Match | None = None,
    message_id: str | None = None,
) -> tuple[int, str]:
    """Record a leak by DISTRO to two outsiders; returns the incident and report ids."""
    spool = Spool(home.db)
    with home.db.transaction() as s:
        member = s.execute(select(Member).where(Member.address == DISTRO)).scalar_one()
        incident = incidents.record_leak(
            s,
            spool,
            home.settings,
            advisory_id=ADVISORY.lower(),  # IDs compare case-insensitively
            member=member,
            sender=DISTRO,
            recipients=[OUTSIDER, COLLEAGUE.upper(), OUTSIDER],
            kind=kind,
            message_id=message_id,
            match=match,
            now=NOW,
        )
        assert incident.report_message_id is not None
        return incident.id, incident.report_message_id


def client(home: RelayHome, key: test_keys.TestKey) -> test_keys.Keyring:
    """The contact's mail client, in a short path: gpg-agent's socket path has a length limit."""
    return test_keys.Keyring(home.root / "k", key, trusted_public=(home.list_public,))


def dispatch(home: RelayHome) -> int:
    spool = Spool(home.db)
    return asyncio.run(Dispatcher(home.settings, home.db, spool, home.crypto).run_once())


def report_delivery(home: RelayHome, report_id: str) -> Delivery:
    with home.db.transaction() as s:
        return s.execute(select(Delivery).where(Delivery.message_id == report_id)).scalar_one()


def audit_rows(db: Database, action: str) -> list[AuditEvent]:
    with db.transaction() as s:
        return [*s.execute(select(AuditEvent).where(AuditEvent.action == action)).scalars()]


# Recording and the report


def test_record_leak_keeps_the_incident_and_the_contact_decrypts_an_exact_report(
    tmp_path: Path, keys: KeyFactory, contact: test_keys.TestKey
) -> None:
    home = make_home(tmp_path, keys)
    home.add_sender(contact)
    match = match_of(FORWARD)
    incident_id, report_id = leak(home, match=match)

    with home.db.transaction() as s:
        incident = s.get_one(Incident, incident_id)
        assert (incident.advisory_id, incident.member.address) == (ADVISORY, DISTRO)
        assert incident.recipients == [OUTSIDER, COLLEAGUE]  # lower-cased, each once
        assert incident.kind == "forward-flagged" and incident.resolved_at is None
        assert incident.matched["excerpts"] == list(match.excerpts)
        assert incident.matched["score"] == round(match.score, 4)
        report = s.get_one(Message, report_id)
        assert report.advisory_id == ADVISORY
    delivery = report_delivery(home, report_id)
    assert (delivery.recipient, delivery.plaintext_allowed) == (CONTACT, False)

    assert dispatch(home) == 1
    delivery = report_delivery(home, report_id)
    assert delivery.status == DeliveryStatus.SENT
    assert delivery.fingerprints == [contact.fingerprint]
    outbox = home.settings.delivery.outbox
    assert outbox is not None
    [copy] = outbox.glob(f"*{CONTACT}*")
    data = copy.read_bytes()
    for secret in (match.excerpts[0][:40], OUTSIDER, ADVISORY, "Leak report"):
        assert secret.encode() not in data  # nothing readable outside the encryption

    opened = OpenedCopy(client(home, contact), data)
    assert opened.decrypted and opened.signer == home.list_fpr
    assert len(opened.enc_to) == 1  # to the contact's key alone
    subject = opened.root["Subject"]
    assert ADVISORY in subject and f"incident {incident_id}" in subject
    text = " ".join(opened.text.split())  # the report wraps excerpts; compare words
    assert f"Advisory: {ADVISORY}: {TITLE}" in text
    assert "embargoed until 2026-12-08 10:00 UTC" in text
    for excerpt in match.excerpts:
        assert " ".join(excerpt.split()) in text.replace(" > ", " ")
    assert f"score {match.score:.2f}" in text
    assert f"{match.matched_fingerprints} fingerprint(s)" in text
    assert f"TO WHOM {OUTSIDER} {COLLEAGUE} SENT BY {DISTRO}" in text
    assert f"Member {DISTRO}" in text
    assert "Incidents recorded against this member: 1 (this one included)" in text
    assert leak_report.POLICY_WARNING in text
    assert f"relay incidents resolve {incident_id} --note TEXT" in text

    [row] = audit_rows(home.db, "incident.recorded")
    assert row.subject == DISTRO
    assert row.detail["incident"] == incident_id and row.detail["excerpts"] == len(match.excerpts)
    assert match.excerpts[0][:40] not in json.dumps(row.detail)  # the audit never quotes


def test_the_report_names_the_relay_message_and_counts_repeated_offenses(
    tmp_path: Path, keys: KeyFactory, contact: test_keys.TestKey
) -> None:
    home = make_home(tmp_path, keys)
    home.add_sender(contact)
    spool = Spool(home.db)
    with home.db.transaction() as s:
        message_id = notices.enqueue_advisory_notice(
            s,
            spool,
            recipients=[OUTSIDER],
            subject="Fwd: projected volumes",
            text=FORWARD,
            list_domain=home.settings.list.domain,
            reason="a stand-in for the forwarded message",
            advisory_id=ADVISORY,
        )
    leak(home, kind="forward-blocked")
    second, report_id = leak(
        home, kind="content-match", match=match_of(FORWARD), message_id=message_id
    )
    with home.db.transaction() as s:
        # Leave only the second report queued, so the outbox holds just it.
        for delivery in s.execute(
            select(Delivery).where(Delivery.message_id != report_id)
        ).scalars():
            delivery_queue.hold(s, delivery, "not part of this test", why=HoldReason.UNKNOWN)
    assert dispatch(home) == 1
    outbox = home.settings.delivery.outbox
    assert outbox is not None
    [copy] = outbox.glob(f"*{CONTACT}*")
    text = " ".join(OpenedCopy(client(home, contact), copy.read_bytes()).text.split())
    assert f'relay message {message_id}, "Fwd: projected volumes"' in text
    assert "quotes the advisory's embargoed text" in text
    assert "Incidents recorded against this member: 2 (this one included)" in text

    [view] = [m for m in members.list_members(home.db, home.crypto) if m.address == DISTRO]
    assert view.incidents == 2
    assert [i.id for i in incidents.list_incidents(home.db, member=DISTRO)] == [1, second]


@pytest.mark.parametrize("contact_state", ["unregistered", "expired key"])
def test_a_contact_without_a_usable_key_gets_a_held_report_and_nothing_on_the_wire(
    tmp_path: Path, keys: KeyFactory, contact_state: str
) -> None:
    with SmtpSink() as sink:
        home = make_home(tmp_path, keys, smarthost=f"127.0.0.1:{sink.port}")
        if contact_state == "expired key":
            home.add_sender(keys.expired("incident-contact-old", CONTACT))
        _, report_id = leak(home, match=match_of(FORWARD))
        dispatch(home)
        assert sink.messages == []
    delivery = report_delivery(home, report_id)
    assert delivery.status == DeliveryStatus.HELD
    assert delivery.last_reason is not None and "no usable key" in delivery.last_reason
    with home.db.transaction() as s:
        assert s.get_one(Incident, 1).report_message_id == report_id
        problem = incidents.contact_problem(s, home.crypto, home.settings)
    assert problem is not None and CONTACT in problem


def test_record_leak_refuses_what_it_cannot_report_and_keeps_nothing(
    tmp_path: Path, keys: KeyFactory
) -> None:
    home = make_home(tmp_path, keys)
    spool = Spool(home.db)
    # An advisory the relay does not know is allowed: a refused post's leak may name one its
    # refusal kept from being created (the CLI still refuses one: test_cli_refusals).
    cases = [
        ({"kind": "gossip"}, "unknown incident kind"),
        ({"recipients": [" "]}, "to whom"),
    ]
    for change, message in cases:
        arguments = {
            "advisory_id": ADVISORY,
            "member": None,
            "sender": OUTSIDER,
            "recipients": [COLLEAGUE],
            "kind": "external-cc",
            "message_id": None,
            "match": None,
            "now": NOW,
            **change,
        }
        with pytest.raises(RelayError, match=message), home.db.transaction() as s:
            incidents.record_leak(s, spool, home.settings, **arguments)
    with home.db.transaction() as s:
        assert s.execute(select(Incident)).first() is None
        assert s.execute(select(Message)).first() is None


# The command line


@pytest.fixture
def relay(tmp_path: Path, keys: KeyFactory, contact: test_keys.TestKey) -> Iterator[CliRelay]:
    relay = set_up(tmp_path, keys, [("distro-leak", DISTRO, "Leaky Linux")])
    db = relay.db
    crypto = admin.open_keyring(relay.settings)
    admin.add_sender(db, crypto, relay.settings, CONTACT, contact.public, "cli:setup")
    with db.transaction() as s:
        now = datetime.now(UTC)
        advisories.create(
            s, ADVISORY, TITLE, now + timedelta(days=7), "t", advisories.NO_RULES, now
        )
        advisories.create(s, "CVE-2026-5555", "other", None, "t", advisories.NO_RULES, now)
    yield relay
    db.dispose()


def test_cli_report_list_filter_and_resolve(relay: CliRelay) -> None:
    out = relay(
        "incident",
        "report",
        ADVISORY,
        "--member",
        DISTRO,
        "--to",
        OUTSIDER,
        "--to",
        COLLEAGUE,
        "--note",
        "the patch was posted to a public chat",
    ).stdout
    assert f"incident 1 recorded against {DISTRO} (1 in total)" in out
    assert f"leak report queued for {CONTACT}" in out
    relay(
        "incidents",
        "report",
        "cve-2026-5555",
        "--member",
        DISTRO,
        "--to",
        OUTSIDER,
        "--sender",
        "dev@distro-leak.example",
        "--note",
        "mentioned on a call",
    )

    table = relay("incidents").stdout
    for cell in (
        "when",
        "to whom",
        "resolved",
        ADVISORY,
        "CVE-2026-5555",
        OUTSIDER,
        COLLEAGUE,
        "dev@distro-leak.example",
        "reported-by-admin",
        "UTC",
    ):
        assert cell in table
    listed = relay.json("incidents", "--advisory", ADVISORY.lower())
    assert isinstance(listed, list) and [i["id"] for i in listed] == [1]
    [first] = listed
    assert first["recipients"] == [OUTSIDER, COLLEAGUE]
    assert (first["member"], first["sender"], first["kind"]) == (
        DISTRO,
        DISTRO,
        "reported-by-admin",
    )
    assert first["note"] == "the patch was posted to a public chat"
    assert first["report_message_id"] and first["resolved_at"] is None
    assert [i["id"] for i in relay.json("incidents", "--member", DISTRO)] == [1, 2]

    assert (
        "incident 1 resolved"
        in relay(
            "incidents", "resolve", "1", "--note", "chat message deleted; team retrained"
        ).stdout
    )
    [resolved] = relay.json("incidents", "--advisory", ADVISORY)
    assert resolved["resolution"] == "chat message deleted; team retrained"
    assert resolved["resolved_by"].startswith("cli:")
    assert "already resolved" in relay("incident", "resolve", "1", "--note", "x", code=1).stderr
    assert "no incident 9" in relay("incidents", "resolve", "9", "--note", "x", code=1).stderr
    [row] = audit_rows(relay.db, "incident.resolved")
    assert (row.subject, row.detail["incident"]) == (DISTRO, 1)
    with relay.db.transaction() as s:
        reports = s.execute(select(Delivery).where(Delivery.recipient == CONTACT)).scalars()
        assert [d.plaintext_allowed for d in reports] == [False, False]


def test_cli_refusals(relay: CliRelay) -> None:
    def report(*args: str) -> str:
        return relay("incident", "report", *args, "--note", "n", code=1).stderr

    assert "no member 'nobody@x.example'" in report(
        ADVISORY, "--member", "nobody@x.example", "--to", OUTSIDER
    )
    assert "no advisory" in report("CVE-2026-9999", "--member", DISTRO, "--to", OUTSIDER)
    assert "not an email address" in report(ADVISORY, "--member", DISTRO, "--to", "not-an-address")
    assert (
        "no member 'nobody@x.example'"
        in relay("incidents", "--member", "nobody@x.example", code=1).stderr
    )
    with relay.db.transaction() as s:
        assert s.execute(select(Incident)).first() is None


def test_cli_warns_when_the_report_must_wait_for_the_contacts_key(relay: CliRelay) -> None:
    relay("sender", "remove", CONTACT)
    result = relay(
        "incident", "report", ADVISORY, "--member", DISTRO, "--to", OUTSIDER, "--note", "n"
    )
    assert "warning: the report is held until then" in result.stderr
    assert "relay sender add" in result.stderr


def test_member_list_shows_the_incident_count(relay: CliRelay) -> None:
    assert "incidents" in relay("member", "list").stdout
    before = relay.json("member", "list")
    assert isinstance(before, list) and before[0]["incidents"] == 0
    for _ in range(2):
        relay("incident", "report", ADVISORY, "--member", DISTRO, "--to", OUTSIDER, "--note", "n")
    [after] = relay.json("member", "list")
    assert after["incidents"] == 2
    # The JSON only gained a field: everything it had before is still there, unchanged.
    assert {k: v for k, v in after.items() if k != "incidents"} == {
        k: v for k, v in before[0].items() if k != "incidents"
    }
    table = relay("member", "list").stdout
    [line] = [line for line in table.splitlines() if DISTRO in line]
    assert line.rstrip(" │|").split("│")[-1].strip() == "2"


def test_migration_0005_downgrades_and_upgrades(relay: CliRelay) -> None:
    from alembic import command
    from alembic.config import Config

    relay("incident", "report", ADVISORY, "--member", DISTRO, "--to", OUTSIDER, "--note", "n")
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["engine"] = relay.db.engine
    with relay.db.transaction() as s:  # 0011 refuses to drop stored posts; these are tests'
        s.execute(text("DELETE FROM message_bodies"))
    command.downgrade(config, "0004")
    assert "incidents" not in inspect(relay.db.engine).get_table_names()
    command.upgrade(config, "head")
    assert relay.db.is_current()
    assert {c["name"] for c in inspect(relay.db.engine).get_columns("incidents")} >= {
        "advisory_id",
        "member_id",
        "sender",
        "recipients",
        "kind",
        "message_id",
        "matched",
        "report_message_id",
        "resolved_at",
        "resolution",
    }
    assert relay.json("incidents") == []

"""`relay advisory ...` and `relay audit` end to end: real config, SQLite, gpg keys, wall clock.

The CLI reads the real clock, so lift times are computed from it: a month ahead, at a
chosen hour and weekday, far enough from any policy boundary not to depend on the
minute the test runs.
"""

from __future__ import annotations

import email
import email.policy
import getpass
import json
import re
from collections.abc import Iterator
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from click.testing import CliRunner
from sqlalchemy import select

from relay.app import membership
from relay.cli.root import cli
from relay.core.times import format_when
from relay.model import AuditEvent, Delivery, Message, MessageKind
from relay.store.spool import PAYLOAD, Spool
from tests.support.cli import CliRelay, set_up
from tests.support.keys import KeyFactory

POLICIES = Path(__file__).resolve().parent.parent / "relay" / "policies"
PUBLIC = "announce@example.com"
ACTIVE = ["cli-adv-a@distro-a.example", "cli-adv-b@distro-b.example"]
REMOVED = "cli-adv-gone@distro-c.example"


class Relay(CliRelay):
    def audit(self, action: str) -> list[AuditEvent]:
        with self.db.transaction() as s:
            query = select(AuditEvent).where(AuditEvent.action == action).order_by(AuditEvent.id)
            return list(s.execute(query).scalars())

    def notices(self, advisory_id: str) -> list[tuple[Message, list[Delivery]]]:
        with self.db.transaction() as s:
            messages = s.execute(
                select(Message)
                .where(Message.advisory_id == advisory_id)
                .order_by(Message.received_at, Message.id)
            ).scalars()
            return [(m, list(m.deliveries)) for m in messages]

    def text(self, message_id: str) -> str:
        data = Spool(self.db).read(message_id, PAYLOAD)
        part = email.message_from_bytes(data, policy=email.policy.default)
        return part.get_content().replace("\r\n", "\n")


def make_relay(root: Path, keys: KeyFactory, policy: str | None = None) -> Relay:
    """A relay set up as an administrator would: init, two active members, one removed."""
    extra = f'[embargo]\npublic_addresses = ["{PUBLIC}"]\n'
    if policy is not None:
        extra += f'policy = "{POLICIES / policy}"\n'
    relay = set_up(
        root, keys, [(a.split("@")[0], a, a) for a in [*ACTIVE, REMOVED]], extra=extra, kind=Relay
    )
    membership.change_state(relay.db, REMOVED, "remove", "cli:setup", "left the list")
    return relay


@pytest.fixture
def relay(tmp_path: Path, keys: KeyFactory) -> Iterator[Relay]:
    home = make_relay(tmp_path, keys)
    yield home
    home.db.dispose()


def ahead(days: int, hour: int, weekday: int | None = None) -> datetime:
    """`hour`:00 UTC at least `days` ahead, on `weekday` (0 = Monday) if given."""
    day = (datetime.now(UTC) + timedelta(days=days)).date()
    if weekday is not None:
        day += timedelta(days=(weekday - day.weekday()) % 7)
    return datetime.combine(day, time(hour), UTC)


def iso(value: datetime) -> str:
    return value.isoformat()


def last_sunday(year: int, month: int) -> date:
    last = date(year + month // 12, month % 12 + 1, 1) - timedelta(days=1)
    return last - timedelta(days=(last.weekday() - 6) % 7)


ME = f"cli:{getpass.getuser()}"


# create


LIFT = ahead(30, 14)
DAY = f"{LIFT:%Y-%m-%d}"


@pytest.mark.parametrize(
    ("when", "tz"),
    [
        (f"{DAY}T15:00:00+01:00", None),
        (f"{DAY} 14:00Z", None),
        (f"{LIFT.astimezone(ZoneInfo('Europe/Berlin')):%Y-%m-%d %H:%M} Europe/Berlin", None),
        (f"{DAY} 19:30", "Asia/Kolkata"),
    ],
)
def test_create_reads_each_when_form_as_one_instant(
    relay: Relay, when: str, tz: str | None
) -> None:
    args = ["--tz", tz] if tz else []
    out = relay(
        "advisory", "create", "CVE-2026-1234", "--title", "Kubelet escape", "--lift", when, *args
    ).stdout
    assert "advisory created: CVE-2026-1234" in out
    assert f"lift time: {format_when(LIFT, tz)}" in out
    shown = relay.json("advisory", "show", "CVE-2026-1234")
    assert shown["lift_at"] == iso(LIFT)
    [(notice, deliveries)] = relay.notices("CVE-2026-1234")  # a lift time set: members told
    assert notice.kind == MessageKind.NOTICE
    assert sorted(d.recipient for d in deliveries) == ACTIVE


def test_create_relative_when_and_an_assigned_id(relay: Relay) -> None:
    before = datetime.now(UTC)
    out = relay("advisory", "create", "--title", "No ID yet", "--lift", "+8d").stdout
    after = datetime.now(UTC)
    assigned = f"ADV-{before.year}-0001"
    assert f"advisory created: {assigned}" in out
    lift_at = datetime.fromisoformat(relay.json("advisory", "show", assigned)["lift_at"])
    assert before + timedelta(days=8) <= lift_at <= after + timedelta(days=8)
    out = relay("advisory", "create", "--title", "Date still open").stdout
    assert f"advisory created: ADV-{before.year}-0002" in out and "no lift time yet" in out
    assert relay.notices(f"ADV-{before.year}-0002") == []  # nothing to announce yet


GAP = last_sunday(datetime.now(UTC).year + 1, 3)  # Europe/Berlin skips 02:00-03:00
REPEAT = last_sunday(datetime.now(UTC).year + 1, 10)  # ... and repeats 02:00-03:00


@pytest.mark.parametrize(
    ("when", "tz", "message"),
    [
        (f"{GAP} 02:30 Europe/Berlin", None, "does not exist in Europe/Berlin"),
        (f"{GAP} 02:30", "Europe/Berlin", "the clocks skip that hour"),
        (f"{REPEAT} 02:30 Europe/Berlin", None, "is ambiguous in Europe/Berlin"),
        (f"{DAY} 14:00", None, "has no time zone"),
        ("next tuesday", None, "accepted forms of an embargo time"),
        (f"{DAY} 14:00 Mars/Olympus", None, "unknown time zone"),
    ],
)
def test_a_when_that_is_not_one_instant_creates_nothing(
    relay: Relay, when: str, tz: str | None, message: str
) -> None:
    args = ["--tz", tz] if tz else []
    result = relay(
        "advisory", "create", "CVE-2026-1", "--title", "T", "--lift", when, *args, code=1
    )
    assert result.stderr.startswith("error: ") and message in result.stderr
    assert relay.json("advisory", "list", "--all") == []
    assert relay.audit("advisory.created") == []


def test_an_unknown_tz_option_is_a_usage_error(relay: Relay) -> None:
    result = relay("advisory", "show", "X", "--tz", "Nowhere/Atall", code=2)
    assert "unknown time zone 'Nowhere/Atall'" in result.stderr


# list and show


def test_list_and_show_give_the_lift_in_utc_and_the_admins_zone(relay: Relay) -> None:
    relay("advisory", "create", "CVE-2026-2", "--title", "Later", "--lift", f"{DAY} 14:00Z")
    relay(
        "advisory",
        "create",
        "K8S-2026-0001",
        "--title",
        "Open",
    )
    listed = relay.json("advisory", "list")
    assert [(a["id"], a["state"], a["lift_at"]) for a in listed] == [
        ("CVE-2026-2", "embargoed", iso(LIFT)),
        ("K8S-2026-0001", "embargoed", None),  # unset lift times last
    ]
    assert re.fullmatch(r"in \d+d( \d+h)?", listed[0]["countdown"])
    assert listed[1]["countdown"] is None
    table = relay("advisory", "list").stdout
    assert f"{DAY} 14:00 UTC" in table and "not set" in table

    shown = relay.json("advisory", "show", "cve-2026-2", "--tz", "Europe/Berlin")
    berlin = LIFT.astimezone(ZoneInfo("Europe/Berlin"))
    assert (shown["zone"], shown["lift_at"], shown["lift_at_local"]) == (
        "Europe/Berlin",
        iso(LIFT),
        iso(berlin),
    )
    assert (shown["created_by"], shown["public_release"]) == (ME, False)
    assert [h["action"] for h in shown["history"]] == ["advisory.created"]
    assert shown["history"][0]["new"] == iso(LIFT)
    assert sorted((d["recipient"], d["kind"], d["status"]) for d in shown["deliveries"]) == [
        (address, "notice", "queued") for address in ACTIVE
    ]
    text = relay("advisory", "show", "CVE-2026-2", "--tz", "Europe/Berlin").stdout
    assert f"{DAY} 14:00 UTC ({berlin:%Y-%m-%d %H:%M} {berlin:%Z}, Europe/Berlin)" in text
    assert "public text: none" in text and ACTIVE[0] in text


def test_show_defaults_to_the_machines_zone(relay: Relay) -> None:
    relay("advisory", "create", "CVE-2026-3", "--title", "T", "--lift", f"{DAY} 14:00Z")
    shown = relay.json("advisory", "show", "CVE-2026-3", env={"TZ": "America/New_York"})
    assert shown["zone"] == "America/New_York"
    assert shown["lift_at_local"] == iso(LIFT.astimezone(ZoneInfo("America/New_York")))


def test_show_of_an_unknown_advisory_is_refused(relay: Relay) -> None:
    assert "no advisory 'CVE-1999-1'" in relay("advisory", "show", "CVE-1999-1", code=1).stderr


# schedule


def test_moving_a_lift_is_audited_and_announced_to_every_active_member(relay: Relay) -> None:
    relay("advisory", "create", "CVE-2026-4", "--title", "Proxy bypass")
    first = ahead(20, 16)
    out = relay("advisory", "schedule", "CVE-2026-4", "--lift", f"{first:%Y-%m-%d %H:%M}Z").stdout
    assert "lift time of CVE-2026-4 set" in out
    moved = ahead(27, 16)
    out = relay(
        "advisory",
        "schedule",
        "CVE-2026-4",
        "--lift",
        f"{moved:%Y-%m-%d} 16:00",
        "--tz",
        "UTC",
        "--reason",
        "the fix needs another week",
    ).stdout
    assert "lift time of CVE-2026-4 moved" in out and "members notified" in out

    [row] = relay.audit("advisory.moved")
    assert (row.actor, row.subject) == (ME, "advisory:CVE-2026-4")
    assert row.detail is not None
    assert (row.detail["old"], row.detail["new"], row.detail["reason"]) == (
        iso(first),
        iso(moved),
        "the fix needs another week",
    )
    _, move_notice = relay.notices("CVE-2026-4")  # the first told of the lift time set
    message, deliveries = move_notice
    assert (message.kind, message.advisory_id) == (MessageKind.NOTICE, "CVE-2026-4")
    assert sorted(d.recipient for d in deliveries) == ACTIVE  # not the removed member
    assert {d.advisory_id for d in deliveries} == {"CVE-2026-4"}
    text = relay.text(message.id)
    assert f"New lift time: {format_when(moved)}" in text
    assert f"Old lift time: {format_when(first)}" in text
    assert "Reason: the fix needs another week" in text

    again = relay("advisory", "schedule", "CVE-2026-4", "--lift", iso(moved)).stdout
    assert "unchanged" in again and len(relay.notices("CVE-2026-4")) == 2


def test_concurrent_lifts_lift_once_and_refuse_the_others_cleanly(relay: Relay) -> None:
    """Real `relay` processes started together: one lifts, every other exits 1."""
    import subprocess
    import sys

    relay("advisory", "create", "CVE-2026-60", "--title", "T", "--lift", iso(LIFT))
    command = [sys.executable, "-m", "relay", "--config", str(relay.config)]
    runs = [
        subprocess.Popen(
            [*command, "advisory", "lift", "CVE-2026-60"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    results = [(p.wait(timeout=120), p.stderr.read() if p.stderr else "") for p in runs]
    for p in runs:
        for stream in (p.stdout, p.stderr):
            if stream:
                stream.close()
    codes = sorted(code for code, _ in results)
    assert codes == [0, 1, 1, 1], results
    for code, stderr in results:
        if code == 1:
            assert "CVE-2026-60 is already lifted" in stderr and "Traceback" not in stderr
    assert len(relay.audit("advisory.lifted")) == 1
    lifted = [m for m, _ in relay.notices("CVE-2026-60") if m.subject.endswith("lifted")]
    assert len(lifted) == 1


def test_moving_a_lift_into_the_past_is_refused(relay: Relay) -> None:
    relay("advisory", "create", "CVE-2026-5", "--title", "T", "--lift", iso(LIFT))
    result = relay("advisory", "schedule", "CVE-2026-5", "--lift", "2020-01-01 16:00Z", code=1)
    assert "is not in the future" in result.stderr and "use lift instead" in result.stderr
    assert relay.json("advisory", "show", "CVE-2026-5")["lift_at"] == iso(LIFT)
    assert relay.audit("advisory.moved") == [] and len(relay.notices("CVE-2026-5")) == 1


# lift, cancel, public text


def test_lift_happens_once_and_closes_the_advisory(relay: Relay, tmp_path: Path) -> None:
    relay("advisory", "create", "CVE-2026-6", "--title", "T", "--lift", iso(LIFT))
    out = relay("advisory", "lift", "CVE-2026-6", "--reason", "embargo broken").stdout
    assert "advisory CVE-2026-6 lifted" in out
    shown = relay.json("advisory", "show", "CVE-2026-6")
    assert shown["state"] == "lifted" and shown["lifted_at"] is not None
    assert shown["countdown"] is None

    again = relay("advisory", "lift", "CVE-2026-6", code=1)
    assert "CVE-2026-6 is already lifted at" in again.stderr
    [lifted] = relay.audit("advisory.lifted")
    assert lifted.detail is not None and lifted.detail["reason"] == "embargo broken"
    lift_notices = [m for m, _ in relay.notices("CVE-2026-6") if m.subject.endswith("lifted")]
    assert len(lift_notices) == 1

    refused = relay("advisory", "schedule", "CVE-2026-6", "--lift", "+30d", code=1)
    assert "it can no longer change" in refused.stderr
    (tmp_path / "public.txt").write_text("Too late.\n")
    relay("advisory", "public-text", "CVE-2026-6", str(tmp_path / "public.txt"), code=1)
    relay("advisory", "cancel", "CVE-2026-6", code=1)
    assert relay.json("advisory", "list") == []  # closed advisories only with --all
    assert [a["id"] for a in relay.json("advisory", "list", "--all")] == ["CVE-2026-6"]


def test_cancel_withdraws_the_advisory_for_good(relay: Relay) -> None:
    relay("advisory", "create", "CVE-2026-7", "--title", "T", "--lift", iso(LIFT))
    out = relay("advisory", "cancel", "CVE-2026-7", "--reason", "not a vulnerability").stdout
    assert "advisory CVE-2026-7 cancelled" in out
    assert relay.json("advisory", "show", "CVE-2026-7")["state"] == "cancelled"
    [row] = relay.audit("advisory.cancelled")
    assert row.detail is not None
    assert (row.actor, row.detail["old"], row.detail["new"], row.detail["reason"]) == (
        ME,
        "embargoed",
        "cancelled",
        "not a vulnerability",
    )
    refused = relay("advisory", "schedule", "CVE-2026-7", "--lift", "+30d", code=1)
    assert "was cancelled" in refused.stderr
    assert "was cancelled" in relay("advisory", "lift", "CVE-2026-7", code=1).stderr


def test_public_text_is_marked_for_release_and_sent_at_the_lift(
    relay: Relay, tmp_path: Path
) -> None:
    relay("advisory", "create", "CVE-2026-8", "--title", "Kubelet escape", "--lift", iso(LIFT))
    text = "Kubernetes security advisory CVE-2026-8.\nUpgrade to 1.99.1.\n"
    (tmp_path / "public.txt").write_text(text, encoding="utf-8")
    out = relay("advisory", "public-text", "CVE-2026-8", str(tmp_path / "public.txt")).stdout
    assert f"({len(text)} characters)" in out and PUBLIC in out
    shown = relay.json("advisory", "show", "CVE-2026-8")
    assert (shown["public_release"], shown["public_text_chars"]) == (True, len(text))
    [row] = relay.audit("advisory.public_text")
    assert "Upgrade" not in json.dumps(row.detail)  # embargoed text stays out of the trail

    stdin = relay("advisory", "public-text", "CVE-2026-8", "-", input="Revised.\n").stdout
    assert "(9 characters)" in stdin
    bad = relay("advisory", "public-text", "CVE-2026-8", "-", input=b"caf\xe9\n", code=1)
    assert "not UTF-8" in bad.stderr

    assert "2 notice(s) queued" in relay("advisory", "lift", "CVE-2026-8").stdout
    public = [(m, d) for m, d in relay.notices("CVE-2026-8") if d[0].recipient == PUBLIC]
    [(message, [delivery])] = public
    assert delivery.plaintext_allowed and relay.text(message.id) == "Revised.\n"


# the list's policy


def test_a_hard_rule_of_the_policy_refuses_the_schedule(tmp_path: Path, keys: KeyFactory) -> None:
    relay = make_relay(tmp_path, keys, policy="openwall-distros.toml")
    try:
        refused = relay(
            "advisory", "create", "CVE-2026-9", "--title", "T", "--lift", "+30d", code=1
        )
        assert "breaks the list's rules" in refused.stderr
        assert "refused (max_embargo)" in refused.stderr
        no_date = relay("advisory", "create", "CVE-2026-9", "--title", "T", code=1)
        assert "refused (require_lift_time_on_create)" in no_date.stderr
        assert relay.json("advisory", "list", "--all") == []

        ok = relay("advisory", "create", "CVE-2026-9", "--title", "T", "--lift", "+5d")
        assert ok.stderr == ""
        relay("advisory", "schedule", "CVE-2026-9", "--lift", "+20d", code=1)
        assert len(relay.notices("CVE-2026-9")) == 1  # the move was not announced
        assert relay.audit("advisory.moved") == []
    finally:
        relay.db.dispose()


def test_a_soft_rule_of_the_policy_warns_and_goes_ahead(tmp_path: Path, keys: KeyFactory) -> None:
    relay = make_relay(tmp_path, keys, policy="kubernetes-distributors.toml")
    try:
        friday = ahead(30, 10, weekday=4)
        done = relay("advisory", "create", "CVE-2026-10", "--title", "T", "--lift", iso(friday))
        assert "warning (lift_time)" in done.stderr and "warning (lift_weekdays)" in done.stderr
        assert "advisory created: CVE-2026-10" in done.stdout
        tuesday = ahead(30, 16, weekday=1)
        moved = relay("advisory", "schedule", "CVE-2026-10", "--lift", iso(tuesday))
        assert moved.stderr == "" and "moved" in moved.stdout
        [row] = relay.audit("advisory.created")
        assert row.detail is not None and len(row.detail["warnings"]) == 2
    finally:
        relay.db.dispose()


# audit


def test_audit_shows_the_trail_and_filters_by_advisory(relay: Relay) -> None:
    relay("advisory", "create", "CVE-2026-11", "--title", "A", "--lift", iso(LIFT))
    relay("advisory", "create", "CVE-2026-12", "--title", "B")
    relay(
        "advisory",
        "schedule",
        "cve-2026-11",
        "--lift",
        iso(LIFT + timedelta(days=1)),
        "--reason",
        "respin",
    )
    mine = relay.json("audit", "--advisory", "cve-2026-11")
    assert [(r["action"], r["subject"]) for r in mine] == [
        ("advisory.created", "advisory:CVE-2026-11"),
        ("advisory.moved", "advisory:CVE-2026-11"),
    ]
    assert (mine[1]["old"], mine[1]["reason"]) == (iso(LIFT), "respin")
    everything = relay.json("audit", "--limit", "500")
    assert {"member.added", "member.removed", "notice.queued"} <= {r["action"] for r in everything}
    assert relay.json("audit", "--limit", "1") == everything[-1:]  # newest last
    table = relay("audit", "--advisory", "CVE-2026-11").stdout
    assert f"{format_when(LIFT)} -> {format_when(LIFT + timedelta(days=1))}" in table
    assert "respin" in table and "CVE-2026-12" not in table
    assert "no advisory" in relay("audit", "--advisory", "CVE-1999-2", code=1).stderr


@pytest.mark.parametrize(
    "command",
    [
        ["advisory"],
        *[
            ["advisory", verb]
            for verb in ("create", "list", "show", "schedule", "lift", "cancel", "public-text")
        ],
        ["audit"],
    ],
)
def test_every_command_has_help(command: list[str]) -> None:
    result = CliRunner().invoke(cli, [*command, "--help"], prog_name="relay")
    assert result.exit_code == 0 and "Usage: relay" in result.stdout

"""Embargo times at and past the edge of the calendar: every value the parser cannot keep
is one refusal with its reason (550 5.6.0 over SMTP, `error: ...` and exit 1 at the CLI),
never an overflow that the sender's MTA retries (451) or the CLI calls internal (70)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select, update

from relay.core.times import EARLIEST, LATEST, WhenError, format_when, parse_when
from relay.model import Advisory, AuditEvent, Delivery, Message, UsedSignature
from tests.support import keys as support
from tests.support.cli import CliRelay, set_up
from tests.support.keys import KeyFactory
from tests.support.mail import pgp_mime_signed, text_entity
from tests.support.relayhome import LIST, RelayHome, RelayThread, distributors, smtp_post
from tests.support.smtpsink import SmtpSink

NOW = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)
POLICIES = Path(__file__).resolve().parent.parent / "relay" / "policies"

# (the value, what the refusal says)
OUT_OF_RANGE = [
    ("+99999999w", "beyond any date"),  # relative, past year 9999
    ("in 99999999999999999999d", "beyond any date"),  # past what a timedelta holds
    ("+" + "9" * 190 + "m", "beyond any date"),  # a number only a float holds
    ("9999-12-31 23:59-01:00", "beyond any date"),  # the offset moves it past year 9999
    ("9999-12-31 23:59 America/New_York", "beyond any date"),  # so does the zone
    (WITH_DEFAULT_ZONE := "9999-12-31 23:30", "beyond any date"),  # and the CLI's --tz
    ("0001-01-01 00:00+01:00", "before any date"),  # and before year 1
    ("0001-01-01 00:00 Europe/Berlin", "before any date"),
    ("9999-12-31 23:59Z", "beyond any date"),  # kept, it could not be shown east of UTC
    ("99999-01-01 00:00Z", "cannot read"),  # a five-digit year
    ("+1e400w", "cannot read"),
    ("@99999999999999999999", "cannot read"),  # an epoch number is no accepted form
    ("99999999999999999999", "cannot read"),
    ("0000-01-01 00:00Z", "not a valid date"),
]


@pytest.mark.parametrize(("text", "says"), OUT_OF_RANGE)
def test_every_value_the_calendar_cannot_keep_is_an_unreadable_time(text: str, says: str) -> None:
    with pytest.raises(WhenError, match=says):
        parse_when(text, "Asia/Tokyo", now=NOW)


def test_the_last_and_first_instants_kept_read_and_show_in_every_zone() -> None:
    latest = parse_when("9999-12-29 23:59:59Z", now=NOW)
    earliest = parse_when("0001-01-03 00:00Z", now=NOW)
    assert (latest, earliest) == (LATEST, EARLIEST)
    for zone in ("Pacific/Kiritimati", "Etc/GMT+12", "Europe/Berlin"):
        assert format_when(latest, zone).startswith("9999-12-29")
        assert format_when(earliest, zone).startswith("1-01-03 00:00 UTC (")


def test_a_kept_time_at_the_very_edge_still_shows_in_utc() -> None:
    """A lift time stored before the parser bounded them has no local time east of UTC:
    it is shown in UTC alone rather than not at all."""
    edge = datetime(9999, 12, 31, 23, 59, tzinfo=UTC)
    assert format_when(edge, "Europe/Berlin") == "9999-12-31 23:59 UTC"


# Over SMTP: a signed post


def _signed(home: RelayHome, key: support.TestKey, body: str) -> bytes:
    return pgp_mime_signed(
        home.client(key),
        key.fingerprint,
        text_entity(body),
        subject="(outer)",
        sender=key.address,
        to=LIST,
    )


def _counts(home: RelayHome) -> tuple[int, ...]:
    with home.db.transaction() as s:
        return tuple(
            s.scalar(select(func.count()).select_from(model)) or 0
            for model in (Advisory, Message, Delivery, UsedSignature, AuditEvent)
        )


def test_a_signed_post_with_an_out_of_range_lift_gets_550_5_6_0_and_nothing_is_kept(
    tmp_path: Path, keys: KeyFactory, sink: SmtpSink
) -> None:
    home = distributors(tmp_path, keys, sink.port)
    src = keys.make("src", "src@example.org")
    before = _counts(home)
    with RelayThread(home.settings) as relay:
        for n, (text, says) in enumerate(OUT_OF_RANGE):
            if text == WITH_DEFAULT_ZONE:  # a post has no default zone: refused for that
                continue
            body = f"X-Advisory: CVE-2026-{7000 + n}\nX-Embargo-Until: {text}\n\nFlaw {n}.\n"
            code, reply = relay.run(smtp_post(relay.port, _signed(home, src, body)))
            assert (code, reply[:5]) == (550, "5.6.0"), (text, code, reply)
            assert "X-Embargo-Until" in reply and says in reply, (text, reply)
            assert "\n" not in reply
    assert _counts(home) == before
    assert sink.messages == []


# At the CLI


@pytest.fixture
def admin(tmp_path: Path, keys: KeyFactory) -> Iterator[CliRelay]:
    relay = set_up(tmp_path, keys, [("lim-a", "lim-a@distro-a.example", "Distro A")])
    relay("advisory", "create", "CVE-2026-7100", "--title", "Kubelet escape")
    yield relay
    relay.db.dispose()


@pytest.mark.parametrize(("text", "says"), OUT_OF_RANGE)
def test_schedule_refuses_an_out_of_range_lift_with_its_reason_and_exit_1(
    admin: CliRelay, text: str, says: str
) -> None:
    result = admin(
        "advisory", "schedule", "CVE-2026-7100", "--lift", text, "--tz", "Asia/Tokyo", code=1
    )
    first, *rest = result.stderr.splitlines()
    assert first.startswith("error: ") and says in first
    assert "internal error" not in result.stderr and "see the log" not in result.stderr
    if says != "cannot read":  # that one adds the accepted forms, as documented
        assert rest == []
    with admin.db.transaction() as s:
        assert s.get_one(Advisory, "CVE-2026-7100").lift_at is None


def test_create_refuses_an_out_of_range_lift_and_creates_nothing(admin: CliRelay) -> None:
    result = admin(
        "advisory", "create", "CVE-2026-7101", "--title", "t", "--lift", "+99999999w", code=1
    )
    assert result.stderr == "error: '+99999999w' lies beyond any date this relay can keep\n"
    with admin.db.transaction() as s:
        assert s.get(Advisory, "CVE-2026-7101") is None


def test_a_lift_far_out_but_kept_is_the_policys_to_refuse(tmp_path: Path, keys: KeyFactory) -> None:
    """How long an embargo may be is the list's rule ([timing.max_embargo]), not the
    parser's: Openwall's 14 days refuses a lift in year 9000; no policy, no rule."""
    policy = f'[embargo]\npolicy = "{POLICIES / "openwall-distros.toml"}"\n'
    relay = set_up(tmp_path, keys, [("lim-b", "lim-b@distro-b.example", "B")], extra=policy)
    far = "9000-06-01 16:00Z"
    refused = relay("advisory", "create", "CVE-2026-7102", "--title", "t", "--lift", far, code=1)
    assert "max_embargo" in refused.stderr and "at most 14d" in refused.stderr
    relay.db.dispose()


def test_show_prints_a_kept_edge_time_in_utc_when_the_zone_cannot_show_it(
    admin: CliRelay,
) -> None:
    with admin.db.transaction() as s:  # as a relay before these bounds could have kept it
        s.execute(
            update(Advisory)
            .where(Advisory.id == "CVE-2026-7100")
            .values(lift_at=datetime(9999, 12, 31, 23, 59, tzinfo=UTC))
        )
    shown = admin("advisory", "show", "CVE-2026-7100", "--tz", "Europe/Berlin").stdout
    assert "9999-12-31 23:59 UTC" in shown
    as_json = admin.json("advisory", "show", "CVE-2026-7100", "--tz", "Europe/Berlin")
    assert as_json["lift_at"].startswith("9999-12-31T23:59") and as_json["lift_at_local"] is None


def test_the_bounds_leave_room_for_the_relays_own_arithmetic() -> None:
    """Reminders 48 hours before, the widest zones either side: none leaves the calendar."""
    for moment in (LATEST, EARLIEST + timedelta(hours=48)):
        for zone in ("Pacific/Kiritimati", "Etc/GMT+12"):
            assert format_when(moment - timedelta(hours=48), zone)

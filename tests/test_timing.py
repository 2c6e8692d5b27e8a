"""Timing rules as data: every rule passes and fails, hard vs soft; bad policy files explain."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from relay.core.errors import RelayError
from relay.policy.timing import (
    NO_RULES,
    PolicyError,
    TimingPolicy,
    TimingRules,
    Violation,
    load_policy,
)

POLICIES = Path(__file__).resolve().parent.parent / "relay" / "policies"
# Tuesday 2026-12-01 10:00 UTC: announcement and "now" unless a test says otherwise.
NOW = datetime(2026, 12, 1, 10, 0, tzinfo=UTC)
TUE_1600 = datetime(2026, 12, 8, 16, 0, tzinfo=UTC)  # exactly 7d 6h after NOW


def policy(**rules: object) -> TimingPolicy:
    return TimingPolicy(name="test", rules=TimingRules.model_validate(rules))


def check(p: TimingPolicy, lift_at: datetime, announced_at: datetime = NOW) -> list[Violation]:
    return p.check(lift_at, announced_at=announced_at, now=NOW)


def rules_of(violations: list[Violation]) -> list[tuple[str, bool]]:
    return [(v.rule, v.hard) for v in violations]


# --- each rule, pass and fail ---------------------------------------------------------------


@pytest.mark.parametrize("hard", [True, False])
def test_min_notice(hard: bool) -> None:
    p = policy(min_notice={"at_least": "7d", "hard": hard})
    assert check(p, NOW + timedelta(days=7)) == []
    [v] = check(p, NOW + timedelta(days=6, hours=23))
    assert (v.rule, v.hard) == ("min_notice", hard)
    assert "6d 23h of notice" in v.message
    assert "2026-12-01 10:00 UTC" in v.message and "at least 7d" in v.message


def test_min_notice_counts_from_the_announcement_not_from_now() -> None:
    p = policy(min_notice={"at_least": "7d", "hard": True})
    announced = NOW - timedelta(days=5)
    assert p.check(NOW + timedelta(days=3), announced_at=announced, now=NOW) == []


def test_min_notice_reports_a_lift_before_the_announcement() -> None:
    p = policy(min_notice={"at_least": "1d", "hard": True})
    [v] = check(p, NOW - timedelta(hours=1))
    assert "is not after the announcement" in v.message


def test_max_embargo_is_hard_and_preferred_is_soft() -> None:
    p = policy(
        max_embargo={"at_most": "14d", "hard": True},
        preferred_max_embargo={"at_most": "7d", "hard": False},
    )
    assert check(p, NOW + timedelta(days=7)) == []
    assert rules_of(check(p, NOW + timedelta(days=10))) == [("preferred_max_embargo", False)]
    assert rules_of(check(p, NOW + timedelta(days=14))) == [("preferred_max_embargo", False)]
    over = check(p, NOW + timedelta(days=14, minutes=1))
    assert rules_of(over) == [("max_embargo", True), ("preferred_max_embargo", False)]
    assert "at most 14d" in over[0].message and "14d" in over[0].message


@pytest.mark.parametrize("hard", [True, False])
def test_lift_time(hard: bool) -> None:
    p = policy(lift_time={"hour_utc": 16, "minute_utc": 0, "hard": hard})
    assert check(p, TUE_1600) == []
    for wrong in (TUE_1600 - timedelta(hours=1), TUE_1600 + timedelta(minutes=30)):
        [v] = check(p, wrong)
        assert (v.rule, v.hard) == ("lift_time", hard)
        assert "16:00 UTC" in v.message
    assert check(p, TUE_1600 + timedelta(seconds=1)) != []


def test_lift_time_is_judged_in_utc_whatever_the_zone_of_the_input() -> None:
    from zoneinfo import ZoneInfo

    p = policy(lift_time={"hour_utc": 16, "hard": True})
    berlin = TUE_1600.astimezone(ZoneInfo("Europe/Berlin"))
    assert berlin.hour == 17
    assert check(p, berlin) == []


def test_lift_weekdays() -> None:
    p = policy(lift_weekdays={"days": ["mon", "tue", "wed", "thu"], "hard": False})
    for day in range(4):  # 2026-12-07 is a Monday
        assert check(p, datetime(2026, 12, 7 + day, 16, tzinfo=UTC)) == []
    for day, name in ((4, "Friday"), (5, "Saturday"), (6, "Sunday")):
        [v] = check(p, datetime(2026, 12, 7 + day, 16, tzinfo=UTC))
        assert (v.rule, v.hard) == ("lift_weekdays", False)
        assert name in v.message and "Mon, Tue, Wed, Thu" in v.message


def test_lift_weekday_is_the_utc_day() -> None:
    p = policy(lift_weekdays={"days": ["thu"], "hard": True})
    # Thursday 23:30 UTC is already Friday in Tokyo; the UTC day counts.
    thursday_late = datetime(2026, 12, 10, 23, 30, tzinfo=UTC)
    assert check(p, thursday_late) == []


def test_second_notice_deadline_and_check() -> None:
    p = policy(second_notice={"before": "24h", "hard": False})
    assert p.second_notice_deadline(TUE_1600) == TUE_1600 - timedelta(hours=24)
    assert check(p, NOW + timedelta(hours=24)) == []
    [v] = check(p, NOW + timedelta(hours=23))
    assert (v.rule, v.hard) == ("second_notice", False)
    assert "2026-12-01 09:00 UTC" in v.message and "final public text" in v.message


def test_second_notice_is_none_without_the_rule() -> None:
    assert NO_RULES.second_notice_deadline(TUE_1600) is None


@pytest.mark.parametrize("hard", [True, False])
def test_require_lift_time_on_create(hard: bool) -> None:
    p = policy(require_lift_time_on_create={"hard": hard})
    [v] = p.check_missing_lift_time()
    assert (v.rule, v.hard) == ("require_lift_time_on_create", hard)
    assert NO_RULES.check_missing_lift_time() == []


def test_no_rules_accepts_anything() -> None:
    assert check(NO_RULES, NOW - timedelta(days=400)) == []
    assert check(NO_RULES, NOW + timedelta(days=400)) == []


def test_violation_reads_as_refusal_or_warning() -> None:
    assert str(Violation("max_embargo", True, "too long")) == "refused (max_embargo): too long"
    assert str(Violation("lift_time", False, "odd hour")) == "warning (lift_time): odd hour"


# --- the shipped policy files ---------------------------------------------------------------


def test_kubernetes_policy_loads_and_only_warns() -> None:
    k8s = load_policy(POLICIES / "kubernetes-distributors.toml")
    assert k8s.name == "kubernetes-distributors" and k8s.description
    assert check(k8s, TUE_1600) == []
    # Friday 15:00 UTC, two days out: every Kubernetes rule fires, none refuses.
    friday = datetime(2026, 12, 4, 15, tzinfo=UTC)
    early = check(k8s, friday, announced_at=NOW)
    assert {rule for rule, _ in rules_of(early)} == {"min_notice", "lift_time", "lift_weekdays"}
    assert not any(v.hard for v in early)
    tomorrow = check(k8s, datetime(2026, 12, 2, 9, tzinfo=UTC))
    assert ("second_notice", False) in rules_of(tomorrow)
    assert k8s.second_notice_deadline(TUE_1600) == datetime(2026, 12, 7, 16, tzinfo=UTC)
    assert k8s.check_missing_lift_time() == []


def test_openwall_policy_loads_and_refuses_long_embargoes() -> None:
    ow = load_policy(POLICIES / "openwall-distros.toml")
    assert ow.name == "openwall-distros"
    assert check(ow, NOW + timedelta(days=5)) == []
    assert rules_of(check(ow, NOW + timedelta(days=10))) == [("preferred_max_embargo", False)]
    assert ("max_embargo", True) in rules_of(check(ow, NOW + timedelta(days=15)))
    assert rules_of(ow.check_missing_lift_time()) == [("require_lift_time_on_create", True)]
    assert ow.second_notice_deadline(TUE_1600) is None


# --- malformed policy files -----------------------------------------------------------------


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "policy.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_other_tables_are_ignored(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        'name = "x"\n[posting]\nanything = 1\n[[forwarding.rule]]\nwhat = "ever"\n'
        '[timing.max_embargo]\nat_most = "14d"\nhard = true\n',
    )
    loaded = load_policy(path)
    assert loaded.rules.max_embargo is not None and loaded.source == path


def test_file_without_timing_table_has_no_rules(tmp_path: Path) -> None:
    loaded = load_policy(write(tmp_path, 'name = "x"\n'))
    assert loaded.rules == TimingRules()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('name = "x"\n[timing\n', "not valid TOML"),
        ('name = "x"\n[timing]\nmax_embargo = 14\n', "timing.max_embargo: expected a table"),
        (
            'name = "x"\n[timing.max_embargo]\nat_most = "14d"\nhard = true\nsoft = 1\n',
            "timing.max_embargo.soft: unknown key",
        ),
        (
            'name = "x"\n[timing.lift_hour]\nhour_utc = 16\nhard = true\n',
            "timing.lift_hour: unknown key",
        ),
        (
            'name = "x"\n[timing.max_embargo]\nat_most = "two weeks"\nhard = true\n',
            "timing.max_embargo.at_most: expected a duration with a unit",
        ),
        (
            'name = "x"\n[timing.min_notice]\nat_least = 604800\nhard = true\n',
            "timing.min_notice.at_least: expected a duration with a unit",
        ),
        ('name = "x"\n[timing.min_notice]\nat_least = "0d"\nhard = true\n', "longer than zero"),
        (
            'name = "x"\n[timing.min_notice]\nat_least = "604800"\nhard = true\n',
            "timing.min_notice.at_least: expected a duration with a unit",
        ),
        (
            'name = "x"\n[timing.min_notice]\nat_least = "7d"\n',
            "timing.min_notice.hard: Field required",
        ),
        (
            'name = "x"\n[timing.min_notice]\nat_least = "7d"\nhard = "no"\n',
            "timing.min_notice.hard",
        ),
        (
            'name = "x"\n[timing.lift_time]\nhour_utc = 24\nhard = true\n',
            "timing.lift_time.hour_utc",
        ),
        (
            'name = "x"\n[timing.lift_weekdays]\ndays = ["mon", "friday"]\nhard = true\n',
            "timing.lift_weekdays.days.1",
        ),
        (
            'name = "x"\n[timing.lift_weekdays]\ndays = []\nhard = true\n',
            "timing.lift_weekdays.days",
        ),
        (
            'name = "x"\n[timing.max_embargo]\nat_most = "7d"\nhard = true\n'
            '[timing.preferred_max_embargo]\nat_most = "14d"\nhard = false\n',
            "preferred_max_embargo must not exceed max_embargo",
        ),
        (
            'name = "x"\n[timing.max_embargo]\nat_most = "7d"\nhard = true\n'
            '[timing.min_notice]\nat_least = "8d"\nhard = false\n',
            "no lift time could satisfy both",
        ),
        ('description = "no name"\n', "name: expected a non-empty string"),
        ('name = "x"\nnmae = "typo"\n', "nmae: unknown key"),
        ('name = "x"\ntiming = "soon"\n', "timing: expected a table"),
    ],
)
def test_malformed_policy_names_file_and_key(tmp_path: Path, text: str, expected: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(PolicyError) as caught:
        load_policy(path)
    assert str(path) in str(caught.value)
    assert expected in str(caught.value)


def test_missing_policy_file(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="policy file not found"):
        load_policy(tmp_path / "absent.toml")


def test_policy_error_is_a_relay_error() -> None:
    assert issubclass(PolicyError, RelayError)

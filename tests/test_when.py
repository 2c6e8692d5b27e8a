"""Embargo time parsing and display: every accepted form, every refusal."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from relay.core.times import ACCEPTED_FORMS, WhenError, countdown, format_when, parse_when

NOW = datetime(2026, 11, 20, 9, 30, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-12-01T15:00:00+01:00", datetime(2026, 12, 1, 14, 0, tzinfo=UTC)),
        ("2026-12-01T15:00+01:00", datetime(2026, 12, 1, 14, 0, tzinfo=UTC)),
        ("2026-12-01 15:00:30-05:00", datetime(2026, 12, 1, 20, 0, 30, tzinfo=UTC)),
        ("2026-12-01 15:00+0530", datetime(2026, 12, 1, 9, 30, tzinfo=UTC)),
        ("2026-12-01 15:00 +01", datetime(2026, 12, 1, 14, 0, tzinfo=UTC)),
        ("2026-12-01 15:00Z", datetime(2026, 12, 1, 15, 0, tzinfo=UTC)),
        ("2026-12-01T15:00:00z", datetime(2026, 12, 1, 15, 0, tzinfo=UTC)),
        ("2026-12-01 15:00 Europe/Berlin", datetime(2026, 12, 1, 14, 0, tzinfo=UTC)),
        ("2026-07-01 15:00 Europe/Berlin", datetime(2026, 7, 1, 13, 0, tzinfo=UTC)),
        ("2026-12-01T15:00 UTC", datetime(2026, 12, 1, 15, 0, tzinfo=UTC)),
        ("2026-12-01 15:00 America/Argentina/Buenos_Aires", datetime(2026, 12, 1, 18, tzinfo=UTC)),
        ("  2026-12-01   15:00 Asia/Kolkata  ", datetime(2026, 12, 1, 9, 30, tzinfo=UTC)),
        ("2026-12-01 15:00+01:00 Europe/Berlin", datetime(2026, 12, 1, 14, 0, tzinfo=UTC)),
    ],
)
def test_accepted_form_gives_utc_instant(text: str, expected: datetime) -> None:
    parsed = parse_when(text)
    assert parsed == expected
    assert parsed.tzinfo is UTC


def test_plain_time_with_default_zone_uses_it() -> None:
    assert parse_when("2026-12-01 15:00", "Europe/Berlin") == datetime(2026, 12, 1, 14, tzinfo=UTC)


def test_explicit_zone_wins_over_default_zone() -> None:
    parsed = parse_when("2026-12-01 15:00 UTC", "Europe/Berlin")
    assert parsed == datetime(2026, 12, 1, 15, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("+7d", NOW + timedelta(days=7)),
        ("in 36h", NOW + timedelta(hours=36)),
        ("IN 45m", NOW + timedelta(minutes=45)),
        ("+2w", NOW + timedelta(weeks=2)),
    ],
)
def test_relative_form_counts_from_now(text: str, expected: datetime) -> None:
    assert parse_when(text, now=NOW) == expected


def test_plain_time_without_zone_is_refused() -> None:
    with pytest.raises(WhenError, match=r"no time zone: add an offset .* a zone name .* --tz"):
        parse_when("2026-12-01 15:00")


def test_skipped_hour_is_refused() -> None:
    with pytest.raises(WhenError, match="does not exist in Europe/Berlin"):
        parse_when("2026-03-29 02:30 Europe/Berlin")


def test_skipped_hour_is_refused_with_default_zone_too() -> None:
    with pytest.raises(WhenError, match="does not exist in America/New_York"):
        parse_when("2026-03-08 02:30", "America/New_York")


def test_repeated_hour_is_refused_as_ambiguous_and_offers_both_offsets() -> None:
    with pytest.raises(WhenError, match="ambiguous in Europe/Berlin") as caught:
        parse_when("2026-10-25 02:30 Europe/Berlin")
    assert "2026-10-25 02:30+02:00 (CEST)" in str(caught.value)
    assert "2026-10-25 02:30+01:00 (CET)" in str(caught.value)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-10-25 02:30+01:00", datetime(2026, 10, 25, 1, 30, tzinfo=UTC)),
        ("2026-10-25 02:30+02:00", datetime(2026, 10, 25, 0, 30, tzinfo=UTC)),
        ("2026-10-25 02:30+01:00 Europe/Berlin", datetime(2026, 10, 25, 1, 30, tzinfo=UTC)),
    ],
)
def test_repeated_hour_with_offset_is_unambiguous(text: str, expected: datetime) -> None:
    assert parse_when(text) == expected


def test_hours_next_to_the_dst_change_are_accepted() -> None:
    assert parse_when("2026-03-29 03:00 Europe/Berlin") == datetime(2026, 3, 29, 1, tzinfo=UTC)
    assert parse_when("2026-10-25 03:00 Europe/Berlin") == datetime(2026, 10, 25, 2, tzinfo=UTC)


def test_offset_not_used_by_the_named_zone_is_refused() -> None:
    with pytest.raises(WhenError, match=r"offset \+03:00 is not in use in Europe/Berlin"):
        parse_when("2026-12-01 15:00+03:00 Europe/Berlin")


@pytest.mark.parametrize(
    "zone_args", [("2026-12-01 15:00 Mars/Olympus",), ("2026-12-01 15:00", "Mars/Olympus")]
)
def test_unknown_zone_is_named(zone_args: tuple[str, ...]) -> None:
    with pytest.raises(WhenError, match="unknown time zone 'Mars/Olympus'"):
        parse_when(*zone_args)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "tomorrow",
        "2026-12-01",
        "15:00 UTC",
        "12/01/2026 15:00 UTC",
        "2026-12-01 15h00 UTC",
        "2026-12-01 15:00 ../../etc/passwd",
        "+7",
        "in 3 fortnights",
    ],
)
def test_garbage_lists_the_accepted_forms(text: str) -> None:
    with pytest.raises(WhenError) as caught:
        parse_when(text, now=NOW)
    assert ACCEPTED_FORMS in str(caught.value)


@pytest.mark.parametrize(
    "text",
    ["2026-13-01 15:00Z", "2026-02-30 15:00Z", "2026-12-01 24:00Z", "2026-12-01 15:00+24:00"],
)
def test_impossible_values_are_refused(text: str) -> None:
    with pytest.raises(WhenError, match="not a valid"):
        parse_when(text)


def test_when_error_is_a_value_error() -> None:
    assert issubclass(WhenError, ValueError)


def test_format_when_shows_utc_with_zone() -> None:
    dt = datetime(2026, 12, 1, 15, 0, tzinfo=timezone(timedelta(hours=1)))
    assert format_when(dt) == "2026-12-01 14:00 UTC"


def test_format_when_adds_local_time_with_abbreviation_and_zone() -> None:
    dt = datetime(2026, 12, 1, 14, 0, tzinfo=UTC)
    assert (
        format_when(dt, "Europe/Berlin")
        == "2026-12-01 14:00 UTC (2026-12-01 15:00 CET, Europe/Berlin)"
    )
    summer = datetime(2026, 7, 1, 14, 0, tzinfo=UTC)
    assert format_when(summer, "Europe/Berlin").endswith("(2026-07-01 16:00 CEST, Europe/Berlin)")


def test_format_when_crossing_midnight_shows_the_local_date() -> None:
    dt = datetime(2026, 12, 1, 23, 30, tzinfo=UTC)
    assert (
        format_when(dt, "Asia/Tokyo") == "2026-12-01 23:30 UTC (2026-12-02 08:30 JST, Asia/Tokyo)"
    )


def test_format_when_in_utc_does_not_repeat_itself() -> None:
    assert format_when(datetime(2026, 12, 1, 14, tzinfo=UTC), "UTC") == "2026-12-01 14:00 UTC"


def test_format_when_keeps_seconds_when_present() -> None:
    assert format_when(datetime(2026, 12, 1, 14, 0, 5, tzinfo=UTC)) == "2026-12-01 14:00:05 UTC"


def test_format_when_round_trips_through_parse_when() -> None:
    dt = datetime(2026, 12, 1, 14, 0, tzinfo=UTC)
    assert parse_when(format_when(dt)) == dt


def test_format_when_refuses_naive_datetimes() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        format_when(datetime(2026, 12, 1, 14))


@pytest.mark.parametrize(
    ("delta", "expected"),
    [
        (timedelta(days=3, hours=4, minutes=59), "in 3d 4h"),
        (timedelta(days=3, minutes=5), "in 3d"),
        (timedelta(hours=2, minutes=5), "in 2h 5m"),
        (timedelta(minutes=45, seconds=59), "in 45m"),
        (-timedelta(hours=2), "2h ago"),
        (-timedelta(days=1, hours=1), "1d 1h ago"),
        (timedelta(seconds=30), "now"),
        (-timedelta(seconds=59), "now"),
    ],
)
def test_countdown(delta: timedelta, expected: str) -> None:
    assert countdown(NOW + delta, NOW) == expected


@pytest.mark.parametrize("text", ["+99999999w", "in 99999999999999999999d"])
def test_a_relative_time_beyond_the_calendar_is_refused_not_an_overflow(text: str) -> None:
    with pytest.raises(WhenError, match="beyond any date"):
        parse_when(text, now=datetime(2026, 12, 1, tzinfo=UTC))

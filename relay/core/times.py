"""Embargo times: parse what an admin or sender writes, show it back unambiguously.

A lift time is the moment an advisory goes public, so a misread hour leaks it
early. Parsing therefore refuses anything that is not one definite instant: a
wall time needs an offset, a zone name or an explicit default zone, and a wall
time that a zone skips or repeats at a DST change is refused rather than
guessed. Results are aware UTC datetimes; display always names the zone.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from relay.core.config import parse_duration

ACCEPTED_FORMS = """\
accepted forms of an embargo time:
  2026-12-01T15:00:00+01:00      ISO 8601 with an offset (seconds optional)
  2026-12-01 15:00Z              UTC
  2026-12-01 15:00 Europe/Berlin a date-time and an IANA zone name (also UTC)
  2026-12-01 15:00               only with a default zone (--tz)
  +7d, in 36h                    relative to now (m, h, d or w)"""

_WHEN = re.compile(
    r"""^\s*
    (?P<date>\d{4}-\d{2}-\d{2}) (?:T|\s+)
    (?P<time>\d{2}:\d{2}(?::\d{2})?)
    (?:\s*(?P<offset>[Zz]|[+-]\d{2}(?::?\d{2})?))?
    (?:\s+(?P<zone>[A-Za-z][A-Za-z0-9_+\-]*(?:/[A-Za-z0-9_+\-]+)*))?
    \s*$""",
    re.VERBOSE,
)
_OFFSET = re.compile(r"^([+-])(\d{2}):?(\d{2})?$")
_RELATIVE = re.compile(r"^\s*(?:\+|in\s+)(\d+(?:\.\d+)?\s*[mhdw])\s*$", re.IGNORECASE)


class WhenError(ValueError):
    """A time that cannot be read as one definite instant; the message says how to fix it."""


# The instants the relay keeps: two days inside datetime's calendar, so that showing one in
# any zone (UTC-12 to UTC+14) and the relay's own arithmetic on it (a reminder 48 hours
# before) stay inside it too. Whether a lift that far out is reasonable is the list's
# policy ([timing.max_embargo]), not the parser's.
EARLIEST = datetime(1, 1, 3, tzinfo=UTC)
LATEST = datetime(9999, 12, 29, 23, 59, 59, tzinfo=UTC)


def _kept(result: datetime, text: str) -> datetime:
    if result > LATEST:
        raise WhenError(f"{text!r} lies beyond any date this relay can keep")
    if result < EARLIEST:
        raise WhenError(f"{text!r} lies before any date this relay can keep")
    return result


def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise WhenError(
            f"unknown time zone {name!r}: use an IANA name such as 'Europe/Berlin' or 'UTC'"
        ) from None


def _offset(text: str) -> timezone:
    if text in ("Z", "z"):
        return UTC
    m = _OFFSET.match(text)
    assert m is not None  # guaranteed by _WHEN
    sign, hours, minutes = m.group(1), int(m.group(2)), int(m.group(3) or 0)
    if hours > 23 or minutes > 59:
        raise WhenError(f"not a valid UTC offset: {text!r}")
    delta = timedelta(hours=hours, minutes=minutes)
    return timezone(-delta if sign == "-" else delta)


def _localize(wall: datetime, zone: ZoneInfo, text: str) -> datetime:
    """Attach `zone` to a wall time, refusing times the zone skips or repeats."""
    early, late = wall.replace(tzinfo=zone, fold=0), wall.replace(tzinfo=zone, fold=1)
    if early.utcoffset() == late.utcoffset():
        return early
    # In a gap, no fold survives the round trip through UTC; in an overlap, both do.
    if early.astimezone(UTC).astimezone(zone).replace(tzinfo=None) != wall:
        raise WhenError(
            f"{text!r} does not exist in {zone.key}: the clocks skip that hour "
            "for daylight saving time; pick another time"
        )
    options = " or ".join(f"{_iso_offset(d)} ({d.tzname()})" for d in (early, late))
    raise WhenError(
        f"{text!r} is ambiguous in {zone.key}: that hour happens twice when daylight saving "
        f"time ends; write the offset instead of the zone: {options}"
    )


def _iso_offset(dt: datetime) -> str:
    return dt.isoformat(sep=" ", timespec="minutes")


def parse_when(
    text: str, default_tz: str | None = None, *, now: datetime | None = None
) -> datetime:
    """Read an embargo time (see ACCEPTED_FORMS) as an aware UTC datetime.

    `default_tz` (the CLI's --tz) gives plain date-times a zone; `now` anchors
    the relative forms and defaults to the wall clock.
    """
    if m := _RELATIVE.match(text):
        start = now or datetime.now(UTC)
        if start.tzinfo is None:
            raise ValueError("now must be timezone-aware")
        try:
            result = (start + parse_duration(m.group(1).replace(" ", ""))).astimezone(UTC)
        except (OverflowError, ValueError):  # beyond year 9999: no definite instant
            raise WhenError(f"{text.strip()!r} lies beyond any date this relay can keep") from None
        return _kept(result, text.strip())
    try:
        return _kept(_absolute(text, default_tz), text.strip())
    except OverflowError:  # a wall time near year 1 or 9999, moved by its offset past it
        side = "before" if text.strip().startswith("0") else "beyond"
        raise WhenError(f"{text.strip()!r} lies {side} any date this relay can keep") from None


def _absolute(text: str, default_tz: str | None) -> datetime:
    """A date-time with an offset, a zone name or `default_tz`, in UTC."""
    m = _WHEN.match(text)
    if m is None:
        raise WhenError(f"cannot read {text.strip()!r} as a time\n{ACCEPTED_FORMS}")
    try:
        wall = datetime.fromisoformat(f"{m['date']}T{m['time']}")
    except ValueError as exc:
        raise WhenError(f"{text.strip()!r} is not a valid date and time: {exc}") from None
    offset = _offset(m["offset"]) if m["offset"] else None
    zone = _zone(m["zone"]) if m["zone"] else None
    if offset is not None:
        result = wall.replace(tzinfo=offset)
        if zone is not None and _zone_offsets(wall, zone).isdisjoint({result.utcoffset()}):
            raise WhenError(f"{text.strip()!r}: offset {m['offset']} is not in use in {zone.key}")
        return result.astimezone(UTC)
    if zone is None:
        if default_tz is None:
            raise WhenError(
                f"{text.strip()!r} has no time zone: add an offset (+01:00 or Z), "
                "a zone name (Europe/Berlin) or --tz"
            )
        zone = _zone(default_tz)
    return _localize(wall, zone, text.strip()).astimezone(UTC)


def _zone_offsets(wall: datetime, zone: tzinfo) -> set[timedelta | None]:
    return {wall.replace(tzinfo=zone, fold=fold).utcoffset() for fold in (0, 1)}


def _stamp(dt: datetime) -> str:
    pattern = "%Y-%m-%d %H:%M:%S" if dt.second else "%Y-%m-%d %H:%M"
    return f"{dt.strftime(pattern)} {dt.tzname()}"


def format_when(dt: datetime, tz: str | None = None) -> str:
    """'2026-12-01 14:00 UTC', with `tz` also '(2026-12-01 15:00 CET, Europe/Berlin)'."""
    if dt.tzinfo is None:
        raise ValueError("format_when needs a timezone-aware datetime")
    shown = _stamp(dt.astimezone(UTC))
    if tz is None:
        return shown
    try:
        local = dt.astimezone(_zone(tz))
    except OverflowError:  # kept before the parser bounded lift times: UTC alone still says it
        return shown
    if local.utcoffset() == timedelta(0) and local.tzname() == "UTC":
        return shown
    return f"{shown} ({_stamp(local)}, {tz})"


def format_duration(delta: timedelta) -> str:
    """The two largest units of a span, truncated to minutes: '3d 4h', '2h 5m', '45m'."""
    minutes = int(abs(delta).total_seconds()) // 60
    days, rest = divmod(minutes, 24 * 60)
    hours, minutes = divmod(rest, 60)
    units = ((days, "d"), (hours, "h"), (minutes, "m"))
    first = next((i for i, (n, _) in enumerate(units) if n), len(units))
    # The largest unit and the next one; a zero second unit is left out ('3d', not '3d 0h').
    return " ".join(f"{n}{unit}" for n, unit in units[first : first + 2] if n) or "0m"


def countdown(dt: datetime, now: datetime) -> str:
    """'in 3d 4h', 'in 45m', '2h ago'; 'now' within a minute either way."""
    delta = dt - now
    if abs(delta) < timedelta(minutes=1):
        return "now"
    span = format_duration(delta)
    return f"in {span}" if delta > timedelta(0) else f"{span} ago"

"""A list's embargo timing rules, loaded as data from its policy file.

Each list states its own rules (Kubernetes: a week of notice, lift at 16:00 UTC
Monday to Thursday; Openwall distros: at most 14 days). They live in the
`[timing]` table of a policy TOML file, one sub-table per rule, each with a
`hard` flag: a hard rule refuses the schedule, a soft one only warns. Checking is
pure: callers pass the times, including `now`, and get Violations back.

Other tables of the same file belong to other modules and are ignored here; the
`[timing]` table itself is validated strictly so a typo cannot disable a rule.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from datetime import UTC, datetime, time, timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    ValidationError,
    model_validator,
)

from relay.core.config import parse_duration
from relay.core.errors import RelayError
from relay.core.times import format_duration, format_when

Weekday = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
_WEEKDAYS: tuple[Weekday, ...] = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_DAY_NAMES = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
_TOP_LEVEL = ("name", "description", "notice", "timing")


class PolicyError(RelayError):
    """A policy file is missing or invalid; the message names the file and the key."""


def _span(value: Any) -> timedelta:
    # A bare number would silently mean seconds; in a policy that is always a mistake.
    try:
        if not isinstance(value, str) or not value.strip()[-1:].isalpha():
            raise ValueError
        delta = parse_duration(value)
    except ValueError:
        raise ValueError("expected a duration with a unit, such as '24h' or '7d'") from None
    if delta <= timedelta(0):
        raise ValueError("must be longer than zero")
    return delta


Span = Annotated[timedelta, BeforeValidator(_span)]


class _Rule(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    hard: StrictBool


class MinNotice(_Rule):
    at_least: Span


class MaxEmbargo(_Rule):
    at_most: Span


class LiftTime(_Rule):
    hour_utc: int = Field(ge=0, le=23)
    minute_utc: int = Field(0, ge=0, le=59)


class LiftWeekdays(_Rule):
    days: tuple[Weekday, ...] = Field(min_length=1)


class SecondNotice(_Rule):
    before: Span


class RequireLiftTime(_Rule):
    """Present means on: a new advisory must state its lift time in its first message."""


class TimingRules(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    min_notice: MinNotice | None = None
    max_embargo: MaxEmbargo | None = None
    preferred_max_embargo: MaxEmbargo | None = None
    lift_time: LiftTime | None = None
    lift_weekdays: LiftWeekdays | None = None
    second_notice: SecondNotice | None = None
    require_lift_time_on_create: RequireLiftTime | None = None

    @model_validator(mode="after")
    def _consistent(self) -> TimingRules:
        longest = self.max_embargo.at_most if self.max_embargo else None
        if longest and self.preferred_max_embargo and self.preferred_max_embargo.at_most > longest:
            raise ValueError("preferred_max_embargo must not exceed max_embargo")
        if longest and self.min_notice and self.min_notice.at_least > longest:
            raise ValueError("min_notice exceeds max_embargo: no lift time could satisfy both")
        return self


@dataclass(frozen=True)
class Violation:
    rule: str
    hard: bool
    message: str

    def __str__(self) -> str:
        return f"{'refused' if self.hard else 'warning'} ({self.rule}): {self.message}"


@dataclass(frozen=True)
class TimingPolicy:
    name: str
    description: str = ""
    rules: TimingRules = field(default_factory=TimingRules)
    source: Path | None = None
    # The list's rules for members, shown at the top of every copy of a post.
    notice: str = ""

    def check(self, lift_at: datetime, *, announced_at: datetime, now: datetime) -> list[Violation]:
        """Every rule the schedule breaks, in file order; hard ones refuse it."""
        lift_at = lift_at.astimezone(UTC)
        checks = (
            self._min_notice,
            self._max_embargo,
            self._lift_time,
            self._lift_weekdays,
            self._second_notice,
        )
        return [v for check in checks for v in check(lift_at, announced_at, now)]

    def _min_notice(
        self, lift_at: datetime, announced_at: datetime, now: datetime
    ) -> list[Violation]:
        rule = self.rules.min_notice
        notice = lift_at - announced_at
        if rule is None or notice >= rule.at_least:
            return []
        given = (
            f"gives only {format_duration(notice)} of notice after"
            if notice > timedelta(0)
            else "is not after"
        )
        return [
            Violation(
                "min_notice",
                rule.hard,
                f"lift {format_when(lift_at)} {given} the announcement at "
                f"{format_when(announced_at)}; the list asks for at least "
                f"{format_duration(rule.at_least)} of notice",
            )
        ]

    def _max_embargo(
        self, lift_at: datetime, announced_at: datetime, now: datetime
    ) -> list[Violation]:
        embargo = lift_at - announced_at
        found = []
        for name, rule, verb in (
            ("max_embargo", self.rules.max_embargo, "allows"),
            ("preferred_max_embargo", self.rules.preferred_max_embargo, "prefers"),
        ):
            if rule is not None and embargo > rule.at_most:
                message = (
                    f"lift {format_when(lift_at)} is {format_duration(embargo)} after the "
                    f"announcement at {format_when(announced_at)}; the list {verb} an embargo "
                    f"of at most {format_duration(rule.at_most)}"
                )
                found.append(Violation(name, rule.hard, message))
        return found

    def _lift_time(
        self, lift_at: datetime, announced_at: datetime, now: datetime
    ) -> list[Violation]:
        rule = self.rules.lift_time
        if rule is None or lift_at.time() == time(rule.hour_utc, rule.minute_utc):
            return []
        usual = f"{rule.hour_utc:02d}:{rule.minute_utc:02d} UTC"
        message = f"lift {format_when(lift_at)} is not at the list's usual lift time of {usual}"
        return [Violation("lift_time", rule.hard, message)]

    def _lift_weekdays(
        self, lift_at: datetime, announced_at: datetime, now: datetime
    ) -> list[Violation]:
        rule = self.rules.lift_weekdays
        if rule is None or _WEEKDAYS[lift_at.weekday()] in rule.days:
            return []
        allowed = ", ".join(day.capitalize() for day in rule.days)
        message = (
            f"lift {format_when(lift_at)} falls on a {_DAY_NAMES[lift_at.weekday()]} (UTC); "
            f"the list lifts only on {allowed}"
        )
        return [Violation("lift_weekdays", rule.hard, message)]

    def _second_notice(
        self, lift_at: datetime, announced_at: datetime, now: datetime
    ) -> list[Violation]:
        rule = self.rules.second_notice
        if rule is None or lift_at - rule.before >= now:
            return []
        message = (
            f"the second notice with the final public text was due "
            f"{format_duration(rule.before)} before the lift {format_when(lift_at)}, "
            f"by {format_when(lift_at - rule.before)}; that time has passed"
        )
        return [Violation("second_notice", rule.hard, message)]

    def check_missing_lift_time(self) -> list[Violation]:
        """What to report when a new advisory arrives without a lift time."""
        rule = self.rules.require_lift_time_on_create
        if rule is None:
            return []
        return [
            Violation(
                "require_lift_time_on_create",
                rule.hard,
                "the first message of an advisory must state a tentative lift (disclosure) time",
            )
        ]

    def second_notice_deadline(self, lift_at: datetime) -> datetime | None:
        """When the final public text must reach the list, if the list asks for it."""
        rule = self.rules.second_notice
        return None if rule is None else lift_at - rule.before


NO_RULES = TimingPolicy(name="none", description="no timing policy configured")


def _format_error(error: ValidationError) -> str:
    lines = []
    for item in error.errors():
        key = ".".join(["timing", *(str(part) for part in item["loc"])])
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = "unknown key"
        elif item["type"] == "model_type":
            message = "expected a table of the rule's settings and 'hard'"
        lines.append(f"  {key}: {message}")
    return "\n".join(lines)


def load_policy(path: Path) -> TimingPolicy:
    """Read the `[timing]` rules of a policy file; other tables are left to their owners."""
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PolicyError(f"policy file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise PolicyError(f"cannot read policy file {path}: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise PolicyError(f"{path}: not valid TOML: {exc}") from None
    problems = [
        f"  {key}: unknown key"
        for key, value in raw.items()
        if key not in _TOP_LEVEL and not _is_table(value)
    ]
    if not isinstance(raw.get("name"), str) or not raw["name"].strip():
        problems.append("  name: expected a non-empty string")
    for key in ("description", "notice"):
        if not isinstance(raw.get(key, ""), str):
            problems.append(f"  {key}: expected a string")
    timing, rules = raw.get("timing", {}), TimingRules()
    if not isinstance(timing, dict):
        problems.append("  timing: expected a table")
    else:
        try:
            rules = TimingRules.model_validate(timing)
        except ValidationError as exc:
            problems.append(_format_error(exc))
    if problems:
        raise PolicyError(f"{path}: invalid policy\n" + "\n".join(problems))
    return TimingPolicy(
        raw["name"], raw.get("description", ""), rules, path, notice=raw.get("notice", "").strip()
    )


def _is_table(value: Any) -> bool:
    return isinstance(value, dict) or (
        isinstance(value, list) and bool(value) and all(isinstance(v, dict) for v in value)
    )

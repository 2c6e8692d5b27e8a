"""What the handlers return (`Handled`), what routing builds from it (`RouteReport`),
and the refusal that reports a leak (`ReportedRefusal`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from relay.app import advisories
from relay.inbound import Rejection
from relay.leaks.external_copies import LeakAttempt
from relay.model import Member
from relay.store import incoming


@dataclass(frozen=True)
class Handled:
    """What one handler did with a post. With a `routing`, it decided where the post goes,
    and the walk ends there."""

    note: str | None = None  # for the report
    routing: incoming.Routing | None = None
    change: advisories.Change | None = None  # the advisory it created, moved or confirmed


@dataclass(frozen=True)
class RouteReport:
    """What routing one post did, for the SMTP edge to log and schedule."""

    routing: incoming.Routing
    change: advisories.Change | None = None
    member: str | None = None  # the member whose post it is
    notes: tuple[str, ...] = ()

    @classmethod
    def of(cls, handled: Sequence[Handled], member: Member | None) -> RouteReport:
        """The report of the handlers that handled the post, one of which decided."""
        routing = next(step.routing for step in handled if step.routing is not None)
        changes = [step.change for step in handled if step.change is not None]
        return cls(
            routing,
            changes[-1] if changes else None,
            member.address if member is not None else None,
            tuple(step.note for step in handled if step.note),
        )


class ReportedRefusal(Rejection):
    """A post refused that leaked: the SMTP edge reports `leaks` before refusing, after
    the accept transaction rolled back."""

    def __init__(self, text: str, leaks: list[LeakAttempt], *, status: str = "5.7.1") -> None:
        super().__init__(550, status, text)
        self.leaks = leaks

    @classmethod
    def of(cls, refusal: Rejection, leaks: list[LeakAttempt]) -> ReportedRefusal:
        """`refusal`, reporting `leaks` too (after those it reports already)."""
        earlier = refusal.leaks if isinstance(refusal, ReportedRefusal) else []
        return cls(refusal.text, [*earlier, *leaks], status=refusal.status)

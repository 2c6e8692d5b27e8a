"""Copies to addresses outside the list, checked for every post on every path.

Addresses in the post's To/Cc (relay.leaks.external_copies) that are neither members,
senders nor holders of an accepted grant got the post from the poster's own mail system
while an advisory it carries is under embargo: the one it goes to (or, refused, the one
it names) and any other whose embargoed text it quotes. The list's forwarding policy
refuses the post (550 5.7.1) or distributes it; either way the leak is reported to the
security contact (relay.app.incidents). An address that is not plain refuses the post
(550 5.1.3) either way.
"""

from __future__ import annotations

from dataclasses import replace

from relay.app import incidents
from relay.inbound import Rejection
from relay.inbound.router.advisory import named_advisory
from relay.inbound.router.context import Context
from relay.inbound.router.results import Handled, ReportedRefusal
from relay.leaks import external_copies
from relay.leaks.content import read_content
from relay.model import utcnow
from relay.policy import forwarding


def external_copies_of(ctx: Context, advisory_id: str | None) -> Handled | None:
    """Refuse or report the copies of a routed post to `advisory_id`, per the policy."""
    leaks, first = _leaks(ctx, advisory_id)
    if ctx.to.refused:
        _, reason = ctx.to.refused[0]
        raise (
            ReportedRefusal(reason, leaks, status="5.1.3")
            if leaks
            else Rejection(550, "5.1.3", reason)
        )
    if first is None:
        return None
    if forwarding.post_with_external_copies(ctx.router.forwarding) == "refuse":
        refused = "The list refused the post (550 5.7.1); the copies it names were sent anyway."
        raise ReportedRefusal(
            forwarding.block_reply(first).split(" ", 2)[2],
            [replace(leak, note=_joined(leak.note, refused)) for leak in leaks],
        )
    now = utcnow()
    for leak in leaks:
        incidents.record_attempt(
            ctx.session, ctx.spool, ctx.router.settings, leak, ctx.message_id, now
        )
    return Handled(note=f"reported external copies of {len(leaks)} advisories")


def leaks_of_refused(ctx: Context) -> list[external_copies.LeakAttempt]:
    """The leaks of a refused post's copies: they went out all the same."""
    leaks, _ = _leaks(ctx, named_advisory(ctx.session, ctx.found))
    return leaks


def _leaks(
    ctx: Context, advisory_id: str | None
) -> tuple[list[external_copies.LeakAttempt], forwarding.Decision | None]:
    if not ctx.to:
        return [], None
    return external_copies.leaks(
        ctx.session,
        carried=external_copies.carried(
            ctx.session, ctx.router.watch, advisory_id, read_content(ctx.intake.payload)
        ),
        to=ctx.to,
        member=ctx.member,
        poster=ctx.intake.poster,
        security_contact=ctx.router.settings.list.security_contact,
        policy=ctx.router.forwarding,
        now=utcnow(),
    )


def _joined(first: str | None, second: str) -> str:
    return second if not first else f"{first}. {second}"

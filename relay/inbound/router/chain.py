"""The chain: the handlers a verified post walks through, in order.

A handler takes the post's `Context` and returns what it did (`Handled`), or None when
the post is not its to handle; it refuses the post by raising `Rejection`. The first
that decides where the post goes ends the walk. Then, on every path, a refusal
included, the copies the post's own mail system sent outside the list are checked:
they went out either way.
"""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy.orm import Session

from relay.inbound import Rejection
from relay.inbound.router import (
    acceptance,
    confirm,
    member,
    outside,
    sender,
    share,
    status,
    vouch,
)
from relay.inbound.router.context import Context
from relay.inbound.router.results import Handled, ReportedRefusal, RouteReport
from relay.store.key_owners import grants_for_key, member_for, sender_for

Handler = Callable[[Context], Handled | None]

HANDLERS: tuple[Handler, ...] = (
    confirm.confirmation,  # a sender's X-Confirm goes alone: before its post is read for a lift
    sender.sender_post,  # a sender's post always decides: no handler below reads it
    member.not_for_members,  # a member's post is refused before it changes anything
    vouch.vouch,  # needs no advisory: a vouch alone names none, and goes to nobody
    status.status_report,  # needs the advisory, as do those below; the post goes on
    share.share,  # goes to nobody: before the posting policy
    member.member_post,  # what is left of a member's post: where the posting policy says
    acceptance.acceptance,  # a key neither a sender's nor a member's: a grant's, or nobody's
)


def route(ctx: Context) -> RouteReport:
    """Walk the post through the handlers; then check its copies outside the list."""
    try:
        handled = _walk(ctx)
    except Rejection as refusal:
        leaks = outside.leaks_of_refused(ctx)
        if leaks:
            raise ReportedRefusal.of(refusal, leaks) from None
        raise
    routing = handled[-1].routing
    assert routing is not None  # the last one decided
    copies = outside.external_copies_of(ctx, routing.advisory_id)
    return RouteReport.of([*handled, copies] if copies else handled, ctx.posting_member)


def is_authorised(session: Session, fingerprint: str) -> bool:
    """A sender's or member's key; or a grant's, which may only accept its terms."""
    return (
        sender_for(session, fingerprint) is not None
        or member_for(session, fingerprint) is not None
        or bool(grants_for_key(session, fingerprint))
    )


def _walk(ctx: Context) -> list[Handled]:
    """What the handlers did, up to the one that decided where the post goes."""
    handled: list[Handled] = []
    for handler in HANDLERS:
        step = handler(ctx)
        if step is None:
            continue
        handled.append(step)
        if step.routing is not None:
            return handled
    # authorised a moment ago, removed since
    raise Rejection(550, "5.7.1", "the signing key is not authorised to post to this list")

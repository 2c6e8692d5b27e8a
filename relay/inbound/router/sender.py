"""An authorised sender's post: its advisory is created or its lift changes, as its signed
keyword lines say (relative times count from the signature's time); it goes to every
active member."""

from __future__ import annotations

from datetime import datetime

from relay.app import advisories, confirmations, embargo
from relay.inbound import Rejection, keywords
from relay.inbound.router.context import Context
from relay.inbound.router.results import Handled
from relay.model import Advisory, utcnow
from relay.store import incoming


def sender_post(ctx: Context) -> Handled | None:
    """Create the advisory the post names (or a new one), move its lift, or lift it now."""
    if ctx.sender is None:
        return None
    found = ctx.found
    now = utcnow()
    lift_at = advisories.lift_time_of(
        keywords.EMBARGO_UNTIL, found.get(keywords.EMBARGO_UNTIL), ctx.post.signed_at
    )
    advisory_id = found.get(keywords.ADVISORY)
    existing = None if advisory_id is None else advisories.find(ctx.session, advisory_id)
    if existing is None:
        if keywords.LIFT in found:
            raise Rejection(550, "5.6.0", f"{keywords.LIFT}: no advisory to lift (name it)")
        title = ctx.post.subject or found.get(keywords.TITLE) or ""
        change = advisories.create(
            ctx.session, advisory_id, title, lift_at, ctx.actor, ctx.router.timing, now
        )
    elif keywords.LIFT in found:
        change = _early_lift(ctx, existing, now)
    else:
        change = _move(ctx, existing, lift_at, now)
    routing = incoming.Routing(change.advisory.id, subject=ctx.copy_subject(change.advisory))
    return Handled(routing=routing, change=change)


def _move(
    ctx: Context, advisory: Advisory, lift_at: datetime | None, now: datetime
) -> advisories.Change:
    """A later lift applies at once; an earlier one waits for a second look."""
    if lift_at is None or lift_at == advisory.lift_at:  # senders repeat the keywords
        return advisories.Change(advisory, advisory.lift_at, advisory.lift_at)
    settings = ctx.router.settings
    if settings.embargo.confirm_earlier_by_mail and confirmations.is_earlier(advisory, lift_at):
        warnings = advisories.check_schedule(advisory, lift_at, ctx.router.timing, now)
        pending = confirmations.request(
            ctx.session,
            ctx.spool,
            settings,
            advisory,
            lift_at,
            actor=ctx.actor,
            message_id=ctx.message_id,
            now=now,
        )
        return advisories.Change(
            advisory, advisory.lift_at, advisory.lift_at, warnings=warnings, pending=pending
        )
    change = advisories.schedule(
        ctx.session, advisory.id, lift_at, ctx.actor, "set by a signed post", ctx.router.timing, now
    )
    if change.moved:
        embargo.notify_schedule_change(
            ctx.session,
            ctx.spool,
            settings,
            advisory,
            change.old,
            change.new,
            "set by a signed post",
        )
    return change


def _early_lift(ctx: Context, advisory: Advisory, now: datetime) -> advisories.Change:
    """`X-Lift: now`: end the embargo at once, after a second look if the list asks."""
    if ctx.found[keywords.LIFT].strip().lower() != "now":
        raise Rejection(550, "5.6.0", f"{keywords.LIFT}: the only value is 'now'")
    advisories.check_open(advisory)
    settings = ctx.router.settings
    if settings.embargo.confirm_earlier_by_mail:
        pending = confirmations.request(
            ctx.session,
            ctx.spool,
            settings,
            advisory,
            None,
            actor=ctx.actor,
            message_id=ctx.message_id,
            now=now,
        )
        return advisories.Change(advisory, advisory.lift_at, advisory.lift_at, pending=pending)
    old = advisory.lift_at
    embargo.lift_now_in(
        ctx.session, ctx.spool, settings, advisory.id, ctx.actor, "asked for by a signed post", now
    )
    return advisories.Change(advisory, old, now)

"""`X-Confirm: ID`: a sender other than the one who asked makes a pending change
(relay.app.confirmations). An instruction to the relay: the post goes to nobody."""

from __future__ import annotations

from relay.app import advisories, confirmations
from relay.core.errors import RelayError
from relay.inbound import Rejection, keywords
from relay.inbound.router.context import Context
from relay.inbound.router.results import Handled
from relay.model import utcnow
from relay.store import incoming


def confirmation(ctx: Context) -> Handled | None:
    """A sender's X-Confirm, alone: no new lift with it, no other advisory named."""
    advisory_id = ctx.found.get(keywords.CONFIRM)
    if ctx.sender is None or advisory_id is None:
        return None
    if keywords.EMBARGO_UNTIL in ctx.found or keywords.LIFT in ctx.found:
        raise Rejection(550, "5.6.0", f"{keywords.CONFIRM} goes alone: no new lift with it")
    named = ctx.found.get(keywords.ADVISORY)
    if named is not None and named.strip().upper() != advisory_id.strip().upper():
        raise Rejection(
            550, "5.6.0", f"{keywords.CONFIRM}: {advisory_id} but {keywords.ADVISORY}: {named}"
        )
    try:
        done = confirmations.confirm(
            ctx.session,
            ctx.spool,
            ctx.router.settings,
            advisory_id,
            actor=ctx.actor,
            policy=ctx.router.timing,
            now=utcnow(),
        )
    except advisories.UnknownAdvisory:
        raise Rejection(550, "5.6.0", f"no advisory {advisory_id} on this list") from None
    except RelayError as exc:
        raise Rejection(550, "5.7.1", f"{keywords.CONFIRM}: {exc}") from None
    return Handled(
        note=f"confirmed change {done.pending.id} of {done.pending.advisory_id}",
        routing=incoming.Routing(done.pending.advisory_id, audience=incoming.NOBODY),
        change=done.change,
    )

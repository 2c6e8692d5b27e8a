"""`X-Vouch: APPLICATION`: a member vouches for an application (relay.app.applications).
Alone, with no advisory named and no status reported, the post goes to nobody."""

from __future__ import annotations

from relay.app import applications
from relay.core.errors import RelayError
from relay.inbound import Rejection, keywords
from relay.inbound.router.context import Context
from relay.inbound.router.results import Handled
from relay.store import incoming


def vouch(ctx: Context) -> Handled | None:
    """Record the member's vouch; end the walk when that is all the post says."""
    member = ctx.posting_member
    application = ctx.found.get(keywords.VOUCH)
    if member is None or application is None:
        return None
    try:
        applications.vouch(ctx.session, application, member.address, ctx.actor)
    except RelayError as exc:
        raise Rejection(550, "5.6.0", f"X-Vouch: {exc}") from None
    alone = keywords.ADVISORY not in ctx.found and keywords.STATUS not in ctx.found
    return Handled(
        note=f"vouched for application {application}",
        routing=incoming.Routing(None, audience=incoming.NOBODY) if alone else None,
    )

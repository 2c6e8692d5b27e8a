"""`X-Accept: TOKEN`: a person a member shared an advisory with accepts the grant's terms
(relay.app.grants), signed by the key the share brought. That key may sign nothing else;
the post goes to nobody, and the advisory's earlier posts are queued for the person."""

from __future__ import annotations

from relay.app import grants
from relay.core.errors import RelayError
from relay.inbound import Rejection, keywords
from relay.inbound.router.context import Context
from relay.inbound.router.results import Handled
from relay.model import utcnow
from relay.store import incoming
from relay.store.key_owners import grants_for_key


def acceptance(ctx: Context) -> Handled | None:
    """A key that is only a grant's: the acceptance of its terms, and nothing else."""
    if ctx.sender is not None or ctx.member is not None:
        return None
    if not grants_for_key(ctx.session, ctx.post.signer):
        return None
    token = ctx.found.get(keywords.ACCEPT)
    if token is None:
        raise Rejection(
            550,
            "5.7.1",
            "this key may only accept the terms of a need-to-know grant "
            "(an 'X-Accept: TOKEN' line); posts to the list come from its members",
        )
    try:
        grant, backlog = grants.accept(
            ctx.session, ctx.router.settings, signer=ctx.post.signer, token=token, now=utcnow()
        )
    except RelayError as exc:
        raise Rejection(550, "5.7.1", f"X-Accept: {exc}") from None
    return Handled(
        note=f"grant {grant.id} accepted; {backlog} earlier posts queued",
        routing=incoming.Routing(grant.advisory_id, audience=incoming.NOBODY),
    )

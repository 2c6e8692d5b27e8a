"""`X-Status: STATUS`: a member reports where it stands on the post's advisory
(relay.app.contributions), with the post's own words; the post goes on as it would."""

from __future__ import annotations

import email.policy

from relay.app import contributions
from relay.core.errors import RelayError
from relay.inbound import Rejection, keywords
from relay.inbound.router.context import Context
from relay.inbound.router.results import Handled


def status_report(ctx: Context) -> Handled | None:
    """Set the member's status on the advisory the post is about."""
    member = ctx.posting_member
    status = ctx.found.get(keywords.STATUS)
    if member is None or status is None:
        return None
    advisory = ctx.advisory
    try:
        contributions.set_status(
            ctx.session,
            advisory.id,
            member,
            contributions.parse_status(status),
            _text(ctx.intake.payload) or None,
            ctx.actor,
        )
    except RelayError as exc:
        raise Rejection(550, "5.6.0", f"X-Status: {exc}") from None
    return Handled(note=f"status {status}")


def _text(payload: bytes) -> str:
    """The post's own words (first text part), for a status report; capped."""
    entity = email.message_from_bytes(payload, policy=email.policy.default)
    for part in entity.walk():
        if part.get_content_type() == "text/plain":
            try:
                return str(part.get_content()).strip()[:4000]
            except (LookupError, ValueError):
                return ""
    return ""

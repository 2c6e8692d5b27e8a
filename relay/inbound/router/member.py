"""A member's post: what it may not say, and where the list's posting policy sends it
(relay.policy.posting): to the whole list, to the senders only, or held for a moderator,
who is told. It may not set embargo times."""

from __future__ import annotations

from sqlalchemy import select

from relay.inbound import Rejection, keywords
from relay.inbound.router.context import Context
from relay.inbound.router.results import Handled
from relay.model import Advisory, Member, Sender
from relay.policy.posting import MemberPosts
from relay.store import delivery_queue, incoming, notices


def not_for_members(ctx: Context) -> Handled | None:
    """Refuse what only a sender (embargo times) or a grant holder (X-Accept) may say."""
    if ctx.posting_member is None:
        return None
    if keywords.EMBARGO_UNTIL in ctx.found:
        raise Rejection(550, "5.7.1", "only the list's authorised senders set embargo times")
    if keywords.ACCEPT in ctx.found:
        raise Rejection(550, "5.7.1", "X-Accept is for people a member shared an advisory with")
    return None


def member_post(ctx: Context) -> Handled | None:
    """The member's post, to whom the posting policy says."""
    member = ctx.posting_member
    if member is None:
        return None
    advisory = ctx.advisory
    mode = ctx.router.posting.member_posts
    hold = delivery_queue.MODERATION_HOLD if mode == MemberPosts.MODERATE else None
    audience = incoming.SENDERS if mode == MemberPosts.SRC else incoming.MEMBERS
    if hold:
        _tell_moderators(ctx, advisory, member)
    return Handled(
        routing=incoming.Routing(
            advisory.id, audience=audience, hold=hold, subject=ctx.copy_subject(advisory)
        )
    )


def _tell_moderators(ctx: Context, advisory: Advisory, member: Member) -> None:
    senders = ctx.session.execute(select(Sender.address)).scalars().all()
    if not senders:
        return
    settings = ctx.router.settings
    notices.enqueue_advisory_notice(
        ctx.session,
        ctx.spool,
        recipients=senders,
        subject=f"[{settings.list.name}] {advisory.id}: a member's post awaits moderation",
        text=(
            f"{member.name} ({member.address}) posted about advisory {advisory.id}.\n"
            "The post is held until a moderator decides:\n\n"
            "  relay held list\n  relay held release MESSAGE-ID\n"
            "  relay held reject MESSAGE-ID --reason TEXT\n"
        ),
        list_domain=settings.list.domain,
        reason=f"member post on {advisory.id} held for moderation",
        advisory_id=advisory.id,
    )

"""`X-Share: person@example.net`, the person's public key attached: a member asks the
relay to share the post's advisory with someone in the member's team (relay.app.grants).
The post goes to nobody. A person outside the team is refused (550 5.7.1, naming the
advisory and its lift) and the attempt is reported as a leak."""

from __future__ import annotations

from dataclasses import replace

from relay.app import grants
from relay.core import addresses
from relay.core.errors import KeyProblem, RelayError
from relay.inbound import Rejection, keywords
from relay.inbound.router.context import Context
from relay.inbound.router.results import Handled, ReportedRefusal
from relay.leaks.external_copies import LeakAttempt
from relay.model import Advisory, AdvisoryState, IncidentKind, Member, utcnow
from relay.policy import forwarding
from relay.store import incoming, parties


def share(ctx: Context) -> Handled | None:
    """Send the person the grant's terms, encrypted to the attached key."""
    member = ctx.posting_member
    person = ctx.found.get(keywords.SHARE)
    if member is None or person is None:
        return None
    advisory = ctx.advisory
    try:
        person = addresses.plain(person)
    except addresses.AddressRefused as exc:
        raise Rejection(550, "5.1.3", f"X-Share: {exc}") from None
    _refuse_outside_the_team(ctx, advisory, member, person)
    keys = grants.attached_keys(ctx.intake.payload)
    if not keys:
        raise Rejection(
            550, "5.6.0", "X-Share: attach the person's public key (application/pgp-keys)"
        )
    try:
        grant = grants.share(
            ctx.session,
            ctx.spool,
            ctx.router.crypto,
            ctx.router.settings,
            advisory_id=advisory.id,
            member=member,
            address=person,
            keys=keys,
            actor=ctx.actor,
        )
    except KeyProblem as exc:
        raise Rejection(550, "5.6.0", f"X-Share: {exc}") from None
    except RelayError as exc:
        raise Rejection(550, "5.7.1", f"X-Share: {exc}") from None
    return Handled(
        note=f"grant {grant.id}: terms sent to {grant.address}",
        routing=incoming.Routing(advisory.id, audience=incoming.NOBODY),
    )


def _refuse_outside_the_team(ctx: Context, advisory: Advisory, member: Member, person: str) -> None:
    """A share with someone outside the member's team is an attempted leak: blocked
    whatever the list's `outsiders` rule (a grant is the relay's to refuse), and
    reported. List parties and team members are left to the grant's own checks."""
    address = person.strip().lower()
    contact = ctx.router.settings.list.security_contact
    kind = parties.kind_of(ctx.session, address, advisory.id, contact)
    in_team = address.rpartition("@")[2] in parties.team_domains(member)
    if kind not in (forwarding.Kind.OUTSIDER, forwarding.Kind.MEMBER_DOMAIN) or in_team:
        return
    decision = forwarding.decide(
        forwarding.Context(
            advisory.id,
            advisory.state == AdvisoryState.EMBARGOED,
            advisory.lift_at,
            forwarding.Recipient(address, forwarding.Kind.OUTSIDER),
            utcnow(),
        ),
        replace(ctx.router.forwarding, outsiders="block"),
    )
    if decision.verdict == forwarding.Verdict.DELIVER:
        return  # not under embargo: the grant's own checks refuse it
    raise ReportedRefusal(
        forwarding.block_reply(decision).split(" ", 2)[2]
        + f": not in the team of {member.address}",
        [
            LeakAttempt(
                advisory_id=advisory.id,
                member_id=member.id,
                sender=member.address,
                recipients=(address,),
                kind=IncidentKind.FORWARD_BLOCKED,
                rule=decision.rule,
                note=f"{member.address} asked the list to share {advisory.id} with "
                f"{address}, outside its team; refused. {decision.reason}.",
            )
        ],
    )

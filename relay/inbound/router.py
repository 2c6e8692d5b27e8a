"""What a verified post means: who posted it, which advisory it belongs to, who gets it.

Runs inside the accept transaction (see `relay.queue.accept_post`), so every
change a post makes (a new advisory, a moved lift, a member's status report)
commits together with the post or not at all.

- An authorised sender's post (SRC) creates its advisory or moves the lift, from
  the keyword lines of its signed part, and goes to every active member.
- A member's post names its advisory by a keyword line, by replying to a copy
  the relay sent, or by the advisory ID in its subject; failing those, the
  embargoed text it quotes identifies it (relay/watch.py). It may report the
  member's status (`X-Status`) or vouch for an application (`X-Vouch`, then it
  goes to nobody); it may not set embargo times. The list's posting
  policy sends it to the whole list, to the senders only, or holds it for a
  moderator (who is told).
- A member's post with `X-Share: person@example.net` and the person's public key
  attached asks the relay to share its advisory with someone in the member's team
  (relay/grants.py); it goes to nobody. The person's key may then sign one thing only:
  the acceptance of the terms (`X-Accept: TOKEN`), which also goes to nobody.
  A person outside the member's team is refused with `550 5.7.1` naming the advisory
  and its lift, and the attempt is reported as a leak.
- Either way, addresses in the post's To/Cc that are neither members, senders nor
  holders of an accepted grant got the post from the poster's own mail system while
  an advisory it carries is under embargo (the one it names, and any other whose
  embargoed text it quotes): the list's forwarding policy (relay/forwarding.py)
  refuses the post with `550 5.7.1`, or distributes it; either way the leak is
  reported to the security contact (relay/incidents.py).

A refusal that reports a leak is a `ReportedRefusal`: the SMTP edge records its leaks
(and keeps the post as their evidence) after the accept transaction rolled back.
"""

from __future__ import annotations

import email.policy
import re
from dataclasses import dataclass, field, replace
from datetime import datetime
from email.message import EmailMessage
from functools import cached_property

from sqlalchemy import select
from sqlalchemy.orm import Session

from relay.app import (
    advisories,
    applications,
    confirmations,
    contributions,
    embargo,
    grants,
    incidents,
)
from relay.core import addresses
from relay.core.config import Settings
from relay.core.crypto import Crypto, GnuPG
from relay.core.errors import KeyProblem, RelayError
from relay.core.spool import Spool
from relay.inbound import Rejection, VerifiedPost, keywords
from relay.leaks import external_copies
from relay.leaks.content import read_content
from relay.leaks.index import EmbargoedText
from relay.model import (
    Advisory,
    AdvisoryState,
    Delivery,
    IncidentKind,
    Member,
    Message,
    Sender,
    utcnow,
)
from relay.policy import forwarding
from relay.policy.posting import MemberPosts, posting_for
from relay.store import delivery_queue, incoming, notices, parties
from relay.store.key_owners import grants_for_key, member_for, sender_for

_MESSAGE_ID = re.compile(r"<[^<>\s]+>")
_ADVISORY_ID = re.compile(r"\b[A-Z][A-Z0-9]*-\d{4}-\d{3,}\b", re.IGNORECASE)


class ReportedRefusal(Rejection):
    """A post refused that leaked: the SMTP edge reports `leaks` before refusing."""

    def __init__(
        self, text: str, leaks: list[external_copies.LeakAttempt], *, status: str = "5.7.1"
    ) -> None:
        super().__init__(550, status, text)
        self.leaks = leaks


@dataclass
class RouteReport:
    """What routing one post did, for the SMTP edge to log and schedule."""

    routing: incoming.Routing | None = None
    change: advisories.Change | None = None
    member: str | None = None
    notes: list[str] = field(default_factory=list)


class PostRouter:
    def __init__(
        self,
        settings: Settings,
        spool: Spool,
        crypto: Crypto | None = None,
        watch: EmbargoedText | None = None,
    ) -> None:
        self.settings = settings
        self.watch = watch or EmbargoedText(spool)
        self.timing = advisories.policy_for(settings)
        self.posting = posting_for(settings)
        self.forwarding = forwarding.load_forwarding(settings.embargo.policy)
        if crypto is not None:
            self.crypto = crypto

    @cached_property
    def crypto(self) -> Crypto:
        """The relay's keyring, for the keys an `X-Share` post brings (opened on first use)."""
        return GnuPG(self.settings.gnupg.home, self.settings.gnupg.binary)

    def is_authorised(self, session: Session, fingerprint: str) -> bool:
        """A sender's or member's key; or a grant's, which may only accept its terms."""
        return (
            sender_for(session, fingerprint) is not None
            or member_for(session, fingerprint) is not None
            or bool(grants_for_key(session, fingerprint))
        )

    def route(
        self,
        session: Session,
        spool: Spool,
        message_id: str,
        post: VerifiedPost,
        found: dict[str, str],
        intake: incoming.Post,
        message: EmailMessage,
        outcome: RouteReport,
    ) -> incoming.Routing:
        """Route a verified post, attributed to its signing key's registered owner
        (`intake.poster`) alone: the envelope sender and the From header are unsigned.

        Whatever the post is and whatever it names, the copies its own mail system sent
        outside the list are checked (relay/external_copies.py), also when the post is
        refused for another reason."""
        member = member_for(session, post.signer)
        to = external_copies.addressed(message, post.protected, self.settings.list.address)
        try:
            routing = self._route(session, spool, message_id, post, found, intake, member, outcome)
        except ReportedRefusal as refused:
            # Refused for its own leak (a share outside the team): the copies its mail
            # system sent outside the list are reported with it.
            leaks, _ = self._leaks(session, _named(session, found), member, intake, to)
            if leaks:
                raise ReportedRefusal(
                    refused.text, [*refused.leaks, *leaks], status=refused.status
                ) from None
            raise
        except Rejection as refused:
            leaks, _ = self._leaks(session, _named(session, found), member, intake, to)
            if leaks:
                raise ReportedRefusal(refused.text, leaks, status=refused.status) from None
            raise
        self._external_copies(
            session, spool, routing.advisory_id, member, intake, to, message_id, outcome
        )
        return routing

    def _route(
        self,
        session: Session,
        spool: Spool,
        message_id: str,
        post: VerifiedPost,
        found: dict[str, str],
        intake: incoming.Post,
        member: Member | None,
        outcome: RouteReport,
    ) -> incoming.Routing:
        if sender_for(session, post.signer) is not None:
            return self._sender_post(session, spool, post, found, message_id, outcome)
        if member is not None:
            return self._member_post(session, spool, post, found, intake.payload, member, outcome)
        if grants_for_key(session, post.signer):
            return self._acceptance(session, post, found, outcome)
        # authorised a moment ago, removed since
        raise Rejection(550, "5.7.1", "the signing key is not authorised to post to this list")

    def _leaks(
        self,
        session: Session,
        advisory_id: str | None,
        member: Member | None,
        intake: incoming.Post,
        to: external_copies.Addressed,
    ) -> tuple[list[external_copies.LeakAttempt], forwarding.Decision | None]:
        if not to:
            return [], None
        return external_copies.leaks(
            session,
            carried=external_copies.carried(
                session, self.watch, advisory_id, read_content(intake.payload)
            ),
            to=to,
            member=member,
            poster=intake.poster,
            security_contact=self.settings.list.security_contact,
            policy=self.forwarding,
            now=utcnow(),
        )

    def _external_copies(
        self,
        session: Session,
        spool: Spool,
        advisory_id: str | None,
        member: Member | None,
        intake: incoming.Post,
        to: external_copies.Addressed,
        message_id: str,
        outcome: RouteReport,
    ) -> None:
        """Refuse or report the copies sent outside the list, per the forwarding policy;
        an address that is not plain refuses the post (550 5.1.3) either way."""
        leaks, first = self._leaks(session, advisory_id, member, intake, to)
        if to.refused:
            _, reason = to.refused[0]
            raise (
                ReportedRefusal(reason, leaks, status="5.1.3")
                if leaks
                else Rejection(550, "5.1.3", reason)
            )
        if first is None:
            return
        if forwarding.post_with_external_copies(self.forwarding) == "refuse":
            refused = "The list refused the post (550 5.7.1); the copies it names were sent anyway."
            raise ReportedRefusal(
                forwarding.block_reply(first).split(" ", 2)[2],
                [replace(leak, note=_joined(leak.note, refused)) for leak in leaks],
            )
        now = utcnow()
        for leak in leaks:
            incidents.record_attempt(session, spool, self.settings, leak, message_id, now)
        outcome.notes.append(f"reported external copies of {len(leaks)} advisories")

    def _sender_post(
        self,
        session: Session,
        spool: Spool,
        post: VerifiedPost,
        found: dict[str, str],
        message_id: str,
        outcome: RouteReport,
    ) -> incoming.Routing:
        """An authorised sender's post: its advisory is created or its lift changes, as
        its signed keyword lines say (relative times count from the signature's time)."""
        actor = f"key:{post.signer}"
        now = utcnow()
        if (confirmed := found.get(keywords.CONFIRM)) is not None:
            return self._confirmation(session, spool, post, found, confirmed, outcome)
        lift_at = advisories.lift_time_of(
            keywords.EMBARGO_UNTIL, found.get(keywords.EMBARGO_UNTIL), post.signed_at
        )
        advisory_id = found.get(keywords.ADVISORY)
        existing = None if advisory_id is None else advisories.find(session, advisory_id)
        if existing is None:
            if keywords.LIFT in found:
                raise Rejection(550, "5.6.0", f"{keywords.LIFT}: no advisory to lift (name it)")
            title = post.subject or found.get(keywords.TITLE) or ""
            change = advisories.create(
                session, advisory_id, title, lift_at, actor, self.timing, now
            )
        elif keywords.LIFT in found:
            change = self._early_lift(session, spool, existing, found, actor, message_id, now)
        else:
            change = self._move(session, spool, existing, lift_at, actor, message_id, now)
        outcome.change = change
        outcome.routing = incoming.Routing(
            change.advisory.id, subject=_copy_subject(post, found, change.advisory)
        )
        return outcome.routing

    def _move(
        self,
        session: Session,
        spool: Spool,
        advisory: Advisory,
        lift_at: datetime | None,
        actor: str,
        message_id: str,
        now: datetime,
    ) -> advisories.Change:
        """A later lift applies at once; an earlier one waits for a second look."""
        if lift_at is None or lift_at == advisory.lift_at:  # senders repeat the keywords
            return advisories.Change(advisory, advisory.lift_at, advisory.lift_at)
        if self.settings.embargo.confirm_earlier_by_mail and confirmations.is_earlier(
            advisory, lift_at
        ):
            warnings = advisories.check_schedule(advisory, lift_at, self.timing, now)
            pending = confirmations.request(
                session,
                spool,
                self.settings,
                advisory,
                lift_at,
                actor=actor,
                message_id=message_id,
                now=now,
            )
            return advisories.Change(
                advisory, advisory.lift_at, advisory.lift_at, warnings=warnings, pending=pending
            )
        change = advisories.schedule(
            session, advisory.id, lift_at, actor, "set by a signed post", self.timing, now
        )
        if change.moved:
            embargo.notify_schedule_change(
                session,
                spool,
                self.settings,
                advisory,
                change.old,
                change.new,
                "set by a signed post",
            )
        return change

    def _early_lift(
        self,
        session: Session,
        spool: Spool,
        advisory: Advisory,
        found: dict[str, str],
        actor: str,
        message_id: str,
        now: datetime,
    ) -> advisories.Change:
        """`X-Lift: now`: end the embargo at once, after a second look if the list asks."""
        if found[keywords.LIFT].strip().lower() != "now":
            raise Rejection(550, "5.6.0", f"{keywords.LIFT}: the only value is 'now'")
        advisories.check_open(advisory)
        if self.settings.embargo.confirm_earlier_by_mail:
            pending = confirmations.request(
                session,
                spool,
                self.settings,
                advisory,
                None,
                actor=actor,
                message_id=message_id,
                now=now,
            )
            return advisories.Change(advisory, advisory.lift_at, advisory.lift_at, pending=pending)
        old = advisory.lift_at
        embargo.lift_now_in(
            session, spool, self.settings, advisory.id, actor, "asked for by a signed post", now
        )
        return advisories.Change(advisory, old, now)

    def _confirmation(
        self,
        session: Session,
        spool: Spool,
        post: VerifiedPost,
        found: dict[str, str],
        advisory_id: str,
        outcome: RouteReport,
    ) -> incoming.Routing:
        """`X-Confirm: ID` from a sender other than the one who asked: the pending change
        is made. The post is an instruction to the relay; it goes to nobody."""
        if keywords.EMBARGO_UNTIL in found or keywords.LIFT in found:
            raise Rejection(550, "5.6.0", f"{keywords.CONFIRM} goes alone: no new lift with it")
        named = found.get(keywords.ADVISORY)
        if named is not None and named.strip().upper() != advisory_id.strip().upper():
            raise Rejection(
                550, "5.6.0", f"{keywords.CONFIRM}: {advisory_id} but {keywords.ADVISORY}: {named}"
            )
        try:
            done = confirmations.confirm(
                session,
                spool,
                self.settings,
                advisory_id,
                actor=f"key:{post.signer}",
                policy=self.timing,
                now=utcnow(),
            )
        except advisories.UnknownAdvisory:
            raise Rejection(550, "5.6.0", f"no advisory {advisory_id} on this list") from None
        except RelayError as exc:
            raise Rejection(550, "5.7.1", f"{keywords.CONFIRM}: {exc}") from None
        if done.change is not None:
            outcome.change = done.change
        outcome.notes.append(f"confirmed change {done.pending.id} of {done.pending.advisory_id}")
        outcome.routing = incoming.Routing(done.pending.advisory_id, audience=incoming.NOBODY)
        return outcome.routing

    def _member_post(
        self,
        session: Session,
        spool: Spool,
        post: VerifiedPost,
        found: dict[str, str],
        payload: bytes,
        member: Member,
        outcome: RouteReport,
    ) -> incoming.Routing:
        if keywords.EMBARGO_UNTIL in found:
            raise Rejection(550, "5.7.1", "only the list's authorised senders set embargo times")
        if keywords.ACCEPT in found:
            raise Rejection(550, "5.7.1", "X-Accept is for people a member shared an advisory with")
        actor = f"key:{post.signer}"
        outcome.member = member.address
        if (application := found.get(keywords.VOUCH)) is not None:
            try:
                applications.vouch(session, application, member.address, actor)
            except RelayError as exc:
                raise Rejection(550, "5.6.0", f"X-Vouch: {exc}") from None
            outcome.notes.append(f"vouched for application {application}")
            if keywords.ADVISORY not in found and keywords.STATUS not in found:
                outcome.routing = incoming.Routing(None, audience=incoming.NOBODY)
                return outcome.routing
        advisory = self._advisory_of(session, found, post, payload)
        if (status := found.get(keywords.STATUS)) is not None:
            try:
                contributions.set_status(
                    session,
                    advisory.id,
                    member,
                    contributions.parse_status(status),
                    _text(payload) or None,
                    actor,
                )
            except RelayError as exc:
                raise Rejection(550, "5.6.0", f"X-Status: {exc}") from None
            outcome.notes.append(f"status {status}")
        if (person := found.get(keywords.SHARE)) is not None:
            self._share(session, spool, advisory, member, person, payload, actor, outcome)
            outcome.routing = incoming.Routing(advisory.id, audience=incoming.NOBODY)
            return outcome.routing
        mode = self.posting.member_posts
        hold = delivery_queue.MODERATION_HOLD if mode == MemberPosts.MODERATE else None
        audience = incoming.SENDERS if mode == MemberPosts.SRC else incoming.MEMBERS
        if hold:
            self._tell_moderators(session, spool, advisory, member)
        outcome.routing = incoming.Routing(
            advisory.id, audience=audience, hold=hold, subject=_copy_subject(post, found, advisory)
        )
        return outcome.routing

    def _share(
        self,
        session: Session,
        spool: Spool,
        advisory: Advisory,
        member: Member,
        person: str,
        payload: bytes,
        actor: str,
        outcome: RouteReport,
    ) -> None:
        try:
            person = addresses.plain(person)
        except addresses.AddressRefused as exc:
            raise Rejection(550, "5.1.3", f"X-Share: {exc}") from None
        self._refuse_outside_the_team(session, advisory, member, person)
        keys = grants.attached_keys(payload)
        if not keys:
            raise Rejection(
                550, "5.6.0", "X-Share: attach the person's public key (application/pgp-keys)"
            )
        try:
            grant = grants.share(
                session,
                spool,
                self.crypto,
                self.settings,
                advisory_id=advisory.id,
                member=member,
                address=person,
                keys=keys,
                actor=actor,
            )
        except KeyProblem as exc:
            raise Rejection(550, "5.6.0", f"X-Share: {exc}") from None
        except RelayError as exc:
            raise Rejection(550, "5.7.1", f"X-Share: {exc}") from None
        outcome.notes.append(f"grant {grant.id}: terms sent to {grant.address}")

    def _refuse_outside_the_team(
        self, session: Session, advisory: Advisory, member: Member, person: str
    ) -> None:
        """A share with someone outside the member's team is an attempted leak: blocked
        whatever the list's `outsiders` rule (a grant is the relay's to refuse), and
        reported. List parties and team members are left to the grant's own checks."""
        address = person.strip().lower()
        kind = parties.kind_of(session, address, advisory.id, self.settings.list.security_contact)
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
            replace(self.forwarding, outsiders="block"),
        )
        if decision.verdict == forwarding.Verdict.DELIVER:
            return  # not under embargo: the grant's own checks refuse it
        raise ReportedRefusal(
            forwarding.block_reply(decision).split(" ", 2)[2]
            + f": not in the team of {member.address}",
            [
                external_copies.LeakAttempt(
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

    def _acceptance(
        self, session: Session, post: VerifiedPost, found: dict[str, str], outcome: RouteReport
    ) -> incoming.Routing:
        """A grant's key signed this: the person accepts the terms, and may do nothing else."""
        token = found.get(keywords.ACCEPT)
        if token is None:
            raise Rejection(
                550,
                "5.7.1",
                "this key may only accept the terms of a need-to-know grant "
                "(an 'X-Accept: TOKEN' line); posts to the list come from its members",
            )
        try:
            grant, backlog = grants.accept(
                session, self.settings, signer=post.signer, token=token, now=utcnow()
            )
        except RelayError as exc:
            raise Rejection(550, "5.7.1", f"X-Accept: {exc}") from None
        outcome.notes.append(f"grant {grant.id} accepted; {backlog} earlier posts queued")
        outcome.routing = incoming.Routing(grant.advisory_id, audience=incoming.NOBODY)
        return outcome.routing

    def _advisory_of(
        self,
        session: Session,
        found: dict[str, str],
        post: VerifiedPost,
        payload: bytes,
    ) -> Advisory:
        """The advisory a member writes about, from signed data only: a keyword line, the
        protected In-Reply-To/References (a reply to the list's copy) or Subject, or the
        embargoed text it quotes."""
        subject = post.subject
        if (named := found.get(keywords.ADVISORY)) is not None:
            advisory = advisories.find(session, named)
            if advisory is None:
                raise Rejection(550, "5.6.0", f"no advisory {named} on this list")
            return advisory
        for reference in _references(post.protected):
            advisory_id = self._replied_to(session, reference)
            if advisory_id is not None:
                return advisories.get(session, advisory_id)
        for candidate in _ADVISORY_ID.findall(subject):
            if (advisory := advisories.find(session, candidate)) is not None:
                return advisory
        # No label: the text itself may quote an embargoed advisory.
        matches = self.watch.match(session, f"{subject}\n{read_content(payload).text}")
        if matches:
            return advisories.get(session, matches[0].advisory_id)
        raise Rejection(
            550,
            "5.6.0",
            "name the advisory: an 'X-Advisory: ID' line, a reply to the list's copy, "
            "or the advisory ID in the subject",
        )

    def _replied_to(self, session: Session, reference: str) -> str | None:
        found = session.execute(
            select(Delivery.advisory_id).where(Delivery.copy_message_id == reference)
        ).scalar_one_or_none()
        if found is not None:
            return found
        local, _, domain = reference.strip("<>").partition("@")
        if domain.lower() == self.settings.list.domain and local.isalnum():
            message = session.get(Message, local)
            return message.advisory_id if message is not None else None
        return None

    def _tell_moderators(
        self, session: Session, spool: Spool, advisory: Advisory, member: Member
    ) -> None:
        senders = session.execute(select(Sender.address)).scalars().all()
        if not senders:
            return
        notices.enqueue_advisory_notice(
            session,
            spool,
            recipients=senders,
            subject=f"[{self.settings.list.name}] {advisory.id}: a member's post awaits moderation",
            text=(
                f"{member.name} ({member.address}) posted about advisory {advisory.id}.\n"
                "The post is held until a moderator decides:\n\n"
                "  relay held list\n  relay held release MESSAGE-ID\n"
                "  relay held reject MESSAGE-ID --reason TEXT\n"
            ),
            list_domain=self.settings.list.domain,
            reason=f"member post on {advisory.id} held for moderation",
            advisory_id=advisory.id,
        )


def _named(session: Session, found: dict[str, str]) -> str | None:
    """The advisory a refused post names (X-Advisory), if this list has it."""
    named = found.get(keywords.ADVISORY)
    advisory = advisories.find(session, named) if named is not None else None
    return advisory.id if advisory is not None else None


def _joined(first: str | None, second: str) -> str:
    return second if not first else f"{first}. {second}"


def _copy_subject(post: VerifiedPost, found: dict[str, str], advisory: Advisory) -> str:
    """The copies' Subject, from signed data only: the protected Subject, an X-Title line,
    else the advisory's ID and title (set from signed data or by an administrator)."""
    signed = post.subject or found.get(keywords.TITLE)
    if signed:
        return signed
    if advisory.title and advisory.title != advisory.id:
        return f"{advisory.id}: {advisory.title}"
    return advisory.id


def _references(protected: dict[str, str]) -> list[str]:
    """The Message-IDs a post replies to, from its protected (signed) header fields."""
    ids: list[str] = []
    for name in ("in-reply-to", "references"):
        ids += _MESSAGE_ID.findall(protected.get(name, ""))
    return list(dict.fromkeys(reversed(ids)))  # the nearest reference first


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

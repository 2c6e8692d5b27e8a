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
- Either way, addresses in the post's To/Cc that are neither members, senders nor
  holders of an accepted grant got the post from the poster's own mail system while
  the advisory is under embargo: the list's forwarding policy (relay/forwarding.py)
  refuses the post with `550 5.7.1`, or distributes it and reports the leak to the
  security contact (relay/incidents.py).
"""

from __future__ import annotations

import email.policy
import re
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.utils import getaddresses
from functools import cached_property

from sqlalchemy import select
from sqlalchemy.orm import Session

from relay import (
    advisories,
    applications,
    contributions,
    embargo,
    forwarding,
    grants,
    incidents,
    keywords,
    queue,
)
from relay.config import Settings
from relay.crypto import Crypto, GnuPG
from relay.errors import KeyProblem, RelayError
from relay.inbound import Rejection, VerifiedPost
from relay.keystore import grants_for_key, member_for, sender_for
from relay.matcher import Match
from relay.models import (
    Advisory,
    AdvisoryState,
    Delivery,
    Grant,
    GrantState,
    Member,
    MemberState,
    Message,
    Sender,
    utcnow,
)
from relay.posting import MemberPosts, posting_for
from relay.spool import Spool
from relay.watch import EmbargoedText

_MESSAGE_ID = re.compile(r"<[^<>\s]+>")
_ADVISORY_ID = re.compile(r"\b[A-Z][A-Z0-9]*-\d{4}-\d{3,}\b", re.IGNORECASE)


@dataclass
class Outcome:
    """What routing one post did, for the SMTP edge to log and schedule."""

    routing: queue.Routing | None = None
    change: advisories.Change | None = None
    member: str | None = None
    notes: list[str] = field(default_factory=list)


class PostRouter:
    def __init__(self, settings: Settings, spool: Spool, crypto: Crypto | None = None) -> None:
        self.settings = settings
        self.watch = EmbargoedText(spool)
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
        payload: bytes,
        message: EmailMessage,
        mail_from: str,
        outcome: Outcome,
    ) -> queue.Routing:
        member = None
        if sender_for(session, post.signer) is not None:
            routing = self._sender_post(session, spool, post, found, outcome)
        elif (member := member_for(session, post.signer)) is not None:
            routing = self._member_post(
                session, spool, post, found, payload, message, member, outcome
            )
        elif grants_for_key(session, post.signer):
            routing = self._acceptance(session, post, found, outcome)
        else:  # authorised a moment ago, removed since
            raise Rejection(550, "5.7.1", "the signing key is not authorised to post to this list")
        if routing.advisory_id is not None:
            self._external_copies(
                session,
                spool,
                message,
                routing.advisory_id,
                member,
                mail_from,
                message_id,
                payload,
                outcome,
            )
        return routing

    def _external_copies(
        self,
        session: Session,
        spool: Spool,
        message: EmailMessage,
        advisory_id: str,
        member: Member | None,
        mail_from: str,
        message_id: str,
        payload: bytes,
        outcome: Outcome,
    ) -> None:
        """Addresses in To/Cc that the relay does not serve: the poster's own mail system
        delivers to them, so they cannot be blocked, only refused or reported."""
        advisory = advisories.get(session, advisory_id)
        visible = [a for a in _visible(message) if a != self.settings.list.address]
        if advisory.state != AdvisoryState.EMBARGOED or not visible:
            return
        now = utcnow()
        decisions = forwarding.decide_all(
            advisory.id,
            embargoed=True,
            lift_at=advisory.lift_at,
            recipients=[
                forwarding.Recipient(a, self._kind(session, a, advisory.id), True) for a in visible
            ],
            now=now,
            policy=self.forwarding,
        )
        outside = [d for d in decisions if d.verdict != forwarding.Verdict.DELIVER]
        if not outside:
            return
        if forwarding.post_with_external_copies(self.forwarding) == "refuse":
            reply = forwarding.block_reply(outside[0])
            raise Rejection(550, "5.7.1", reply.split(" ", 2)[2])
        incidents.record_leak(
            session,
            spool,
            self.settings,
            advisory_id=advisory.id,
            member=member,
            sender=mail_from,
            recipients=[d.context.recipient.address for d in outside],
            kind="external-cc",
            message_id=message_id,
            match=self._evidence(session, advisory.id, payload),
            now=now,
        )
        outcome.notes.append(f"reported {len(outside)} external copies")

    def _evidence(self, session: Session, advisory_id: str, payload: bytes) -> Match | None:
        """How strongly the post's text matches what the list sent about the advisory."""
        text = _text(payload)
        if not text:
            return None
        return next(
            (m for m in self.watch.match(session, text) if m.advisory_id == advisory_id), None
        )

    def _kind(self, session: Session, address: str, advisory_id: str) -> forwarding.Kind:
        if session.execute(
            select(Member.id).where(Member.address == address, Member.state == MemberState.ACTIVE)
        ).first():
            return forwarding.Kind.MEMBER
        if session.execute(select(Sender.id).where(Sender.address == address)).first():
            return forwarding.Kind.SENDER
        if session.execute(
            select(Grant.id).where(
                Grant.address == address,
                Grant.advisory_id == advisory_id,
                Grant.state == GrantState.ACCEPTED,
            )
        ).first():
            return forwarding.Kind.GRANT_HOLDER
        domain = address.rpartition("@")[2]
        for domains in session.execute(
            select(Member.domains).where(Member.state == MemberState.ACTIVE)
        ).scalars():
            if domain in (domains or []):
                return forwarding.Kind.MEMBER_DOMAIN
        return forwarding.Kind.OUTSIDER

    def _sender_post(
        self,
        session: Session,
        spool: Spool,
        post: VerifiedPost,
        found: dict[str, str],
        outcome: Outcome,
    ) -> queue.Routing:
        change = advisories.from_post(
            session, found, post.subject, post.signer, utcnow(), self.timing
        )
        if change.moved and not change.created:
            embargo.notify_schedule_change(
                session,
                spool,
                self.settings,
                change.advisory,
                change.old,
                change.new,
                "set by a signed post",
            )
        outcome.change = change
        outcome.routing = queue.Routing(change.advisory.id)
        return outcome.routing

    def _member_post(
        self,
        session: Session,
        spool: Spool,
        post: VerifiedPost,
        found: dict[str, str],
        payload: bytes,
        message: EmailMessage,
        member: Member,
        outcome: Outcome,
    ) -> queue.Routing:
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
                outcome.routing = queue.Routing(None, audience=queue.NOBODY)
                return outcome.routing
        advisory = self._advisory_of(session, found, post.subject, message, payload)
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
            outcome.routing = queue.Routing(advisory.id, audience=queue.NOBODY)
            return outcome.routing
        mode = self.posting.member_posts
        hold = queue.MODERATION_HOLD if mode == MemberPosts.MODERATE else None
        audience = queue.SENDERS if mode == MemberPosts.SRC else queue.MEMBERS
        if hold:
            self._tell_moderators(session, spool, advisory, member)
        outcome.routing = queue.Routing(advisory.id, audience=audience, hold=hold)
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
        outcome: Outcome,
    ) -> None:
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

    def _acceptance(
        self, session: Session, post: VerifiedPost, found: dict[str, str], outcome: Outcome
    ) -> queue.Routing:
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
        outcome.routing = queue.Routing(grant.advisory_id, audience=queue.NOBODY)
        return outcome.routing

    def _advisory_of(
        self,
        session: Session,
        found: dict[str, str],
        subject: str,
        message: EmailMessage,
        payload: bytes,
    ) -> Advisory:
        """The advisory a member writes about: keyword line, reply threading, subject, or
        the embargoed text it quotes."""
        if (named := found.get(keywords.ADVISORY)) is not None:
            advisory = advisories.find(session, named)
            if advisory is None:
                raise Rejection(550, "5.6.0", f"no advisory {named} on this list")
            return advisory
        for reference in _references(message):
            advisory_id = self._replied_to(session, reference)
            if advisory_id is not None:
                return advisories.get(session, advisory_id)
        for candidate in _ADVISORY_ID.findall(subject):
            if (advisory := advisories.find(session, candidate)) is not None:
                return advisory
        # No label: the text itself may quote an embargoed advisory.
        matches = self.watch.match(session, f"{subject}\n{_text(payload)}")
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
        queue.enqueue_advisory_notice(
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


def _visible(message: EmailMessage) -> list[str]:
    """Addresses in the post's To and Cc, lower-cased, in order."""
    found: list[str] = []
    for name in ("To", "Cc"):
        try:
            values = message.get_all(name) or []
        except (ValueError, IndexError):
            continue
        for _, address in getaddresses([str(v) for v in values]):
            if "@" in address:
                found.append(address.lower())
    return list(dict.fromkeys(found))


def _references(message: EmailMessage) -> list[str]:
    ids: list[str] = []
    for name in ("In-Reply-To", "References"):
        try:
            value = message.get(name)
        except (ValueError, IndexError):
            continue
        ids += _MESSAGE_ID.findall(str(value or ""))
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

"""The last check before a copy leaves: may this recipient receive this message now?

The dispatcher asks for every copy it is about to build that is not simply a member's
copy of a list post (members and senders may read everything on the list). Two
questions, both answered by the forwarding rules (relay/policy/forwarding.py) with the
recipient as relay/store/parties.py sees it:

1. the copy's own advisory: a person holding a pending grant may receive its terms and
   nothing else; anyone who is no list party (a removed sender, a revoked grant, a
   public address before the lift) gets nothing before the lift;
2. every other embargoed advisory the copy's text quotes (relay/leaks/index.py): a grant for
   one advisory opens no other, and a public text may not carry another advisory's
   embargoed words.

A copy that may not go is held until the lift of the advisory that stopped it (the
lift's release step sends it then, after asking again here), the leak is reported
once to the security contact, and under `block` the poster hears of it too (under
`flag` only the security contact does).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from relay.app import incidents
from relay.core.config import Settings
from relay.leaks.content import Content
from relay.leaks.index import EmbargoedText
from relay.leaks.matcher import Match
from relay.model import (
    Advisory,
    AdvisoryState,
    Delivery,
    GrantState,
    Incident,
    IncidentKind,
    Member,
    Message,
    MessageKind,
    Sender,
)
from relay.policy.forwarding import (
    Context,
    Decision,
    ForwardingPolicy,
    Kind,
    Recipient,
    Verdict,
    decide,
)
from relay.store import delivery_queue, notices, parties
from relay.store.key_owners import grant_for, member_for, sender_addresses, sender_for
from relay.store.spool import Spool

# Recipients who may read everything the list carries.
_LIST_PARTIES = (Kind.MEMBER, Kind.SENDER)


@dataclass(frozen=True)
class Stopped:
    """Why a copy may not go now: the deciding rule, and the quoted text if that was it
    (or the parts that could not be read, when the copy failed closed)."""

    decision: Decision
    match: Match | None = None
    unreadable: tuple[str, ...] = ()

    @property
    def advisory_id(self) -> str:
        return self.decision.context.advisory_id


class Gate:
    def __init__(self, settings: Settings, watch: EmbargoedText, policy: ForwardingPolicy) -> None:
        self.settings = settings
        self.watch = watch
        self.policy = policy

    def check(
        self,
        session: Session,
        *,
        recipient: str,
        message_id: str,
        advisory: Advisory | None,
        content: Callable[[], Content],
        now: datetime,
    ) -> Stopped | None:
        """None if the copy may go; else what stopped it. `content` reads the copy's text."""
        contact = self.settings.list.security_contact
        kind = parties.kind_of(session, recipient, advisory.id if advisory else "", contact)
        if advisory is not None:
            terms = kind == Kind.PENDING_GRANT and _is_terms(
                session, recipient, advisory, message_id
            )
            decision = decide(_context(advisory, recipient, kind, now, terms), self.policy)
            if decision.verdict != Verdict.DELIVER:
                return Stopped(decision)
        if kind in _LIST_PARTIES:
            return None
        read = content()
        for match in self.watch.match(session, read.text):
            if advisory is not None and match.advisory_id == advisory.id:
                continue  # decided above
            quoted = session.get(Advisory, match.advisory_id)
            if quoted is None or quoted.state != AdvisoryState.EMBARGOED:
                continue
            kind = parties.kind_of(session, recipient, quoted.id, contact)
            decision = decide(_context(quoted, recipient, kind, now), self.policy)
            if decision.verdict != Verdict.DELIVER:
                return Stopped(decision, match)
        if read.unreadable:
            return self._unreadable(session, recipient, advisory, read.unreadable, now)
        return None

    def _unreadable(
        self,
        session: Session,
        recipient: str,
        advisory: Advisory | None,
        reasons: tuple[str, ...],
        now: datetime,
    ) -> Stopped | None:
        """Fail closed: what cannot be read may quote any advisory still under embargo, so
        it goes only to someone who may read all of them. Otherwise it is held until the
        last of those embargoes ends (unset lift times last), and asked again then."""
        contact = self.settings.list.security_contact
        stopping: list[tuple[Advisory, Decision]] = []
        for other in session.execute(
            select(Advisory).where(Advisory.state == AdvisoryState.EMBARGOED)
        ).scalars():
            if advisory is not None and other.id == advisory.id:
                continue  # decided already: the recipient may read its own advisory
            kind = parties.kind_of(session, recipient, other.id, contact)
            decision = decide(_context(other, recipient, kind, now), self.policy)
            if decision.verdict != Verdict.DELIVER:
                stopping.append((other, decision))
        if not stopping:
            return None
        latest = max(stopping, key=lambda item: (item[0].lift_at is None, item[0].lift_at or now))
        return Stopped(latest[1], unreadable=reasons)


def hold(
    session: Session,
    spool: Spool,
    settings: Settings,
    delivery_id: int,
    stopped: Stopped,
    now: datetime,
) -> Delivery:
    """Hold the copy until the lift, report the leak (once), and tell the poster (block)."""
    delivery = session.get_one(Delivery, delivery_id)
    message = session.get_one(Message, delivery.message_id)
    decision = stopped.decision
    delivery_queue.hold_for_lift(
        session, delivery, stopped.advisory_id, decision.reason, decision.rule
    )
    if _reported(session, delivery, stopped.advisory_id):
        return delivery
    verdict = decision.verdict
    poster = _poster(session, message)
    incidents.record_leak(
        session,
        spool,
        settings,
        advisory_id=stopped.advisory_id,
        member=poster if isinstance(poster, Member) else None,
        sender=message.poster or settings.list.address,
        recipients=[delivery.recipient],
        kind=IncidentKind.FORWARD_BLOCKED
        if verdict == Verdict.BLOCK
        else IncidentKind.FORWARD_FLAGGED,
        message_id=message.id,
        match=stopped.match,
        now=now,
        note=_unreadable_note(stopped)
        + f"{stopped.decision.reason}. The copy for {delivery.recipient} (delivery "
        f"{delivery.id}) is held until the lift of {stopped.advisory_id} and sent then.",
        rule=decision.rule,
    )
    if verdict == Verdict.BLOCK and poster is not None:
        _tell_poster(session, spool, settings, poster, message, delivery, stopped)
    if message.kind == MessageKind.NOTICE and delivery.plaintext_allowed:
        _tell_senders(session, spool, settings, message, delivery, stopped)
    return delivery


def _unreadable_note(stopped: Stopped) -> str:
    if not stopped.unreadable:
        return ""
    return (
        "Part of it could not be read (" + "; ".join(stopped.unreadable) + "), so it fails closed. "
    )


def _tell_senders(
    session: Session,
    spool: Spool,
    settings: Settings,
    message: Message,
    delivery: Delivery,
    stopped: Stopped,
) -> None:
    """A public text held at its lift: the senders must know it did not go out."""
    lst = settings.list
    why = "quotes the embargoed advisory" if stopped.match is not None else "may carry the advisory"
    text = (
        f"The public text sent at the lift ({message.subject}) was not sent to\n"
        f"{delivery.recipient}: it {why} {stopped.advisory_id}.\n"
        f"{stopped.decision.reason}.\n\n"
        f"It is held until the lift of {stopped.advisory_id} and goes out then, unless you\n"
        "correct it first. The security contact has the leak report.\n"
    )
    notices.enqueue_advisory_notice(
        session,
        spool,
        recipients=sender_addresses(session, lst.security_contact),
        subject=f"[{lst.name}] public text held: it carries {stopped.advisory_id}",
        text=text,
        list_domain=lst.domain,
        reason=f"public text (delivery {delivery.id}) held for {stopped.advisory_id}",
        advisory_id=stopped.advisory_id,
    )


def _context(
    advisory: Advisory, recipient: str, kind: Kind, now: datetime, terms: bool = False
) -> Context:
    return Context(
        advisory.id,
        advisory.state == AdvisoryState.EMBARGOED,
        advisory.lift_at,
        Recipient(recipient, kind),
        now,
        terms,
    )


def _is_terms(session: Session, recipient: str, advisory: Advisory, message_id: str) -> bool:
    grant = grant_for(session, recipient, advisory.id)
    return (
        grant is not None
        and grant.state == GrantState.PENDING
        and grant.terms_message_id == message_id
    )


def _reported(session: Session, delivery: Delivery, advisory_id: str) -> bool:
    """Whether this copy's leak was already reported (a retry held it again)."""
    found = session.execute(
        select(Incident.recipients).where(
            Incident.message_id == delivery.message_id,
            Incident.advisory_id == advisory_id,
            Incident.kind.in_((IncidentKind.FORWARD_BLOCKED, IncidentKind.FORWARD_FLAGGED)),
        )
    ).scalars()
    return any(delivery.recipient in recipients for recipients in found)


def _poster(session: Session, message: Message) -> Member | Sender | None:
    """The member or sender whose key signed the message; None for the relay's own notices.

    By the signing key alone: the envelope sender of a post is anyone's to choose."""
    if message.kind != MessageKind.POST or not message.signer_fingerprint:
        return None
    return member_for(session, message.signer_fingerprint) or sender_for(
        session, message.signer_fingerprint
    )


def _tell_poster(
    session: Session,
    spool: Spool,
    settings: Settings,
    poster: Member | Sender,
    message: Message,
    delivery: Delivery,
    stopped: Stopped,
) -> None:
    lst = settings.list
    why = "quotes" if stopped.match is not None else "is about"
    text = (
        f"Your post of {message.received_at:%Y-%m-%d %H:%M} UTC {why} advisory "
        f"{stopped.advisory_id}, so the list did not send it to {delivery.recipient}:\n"
        f"{stopped.decision.reason}.\n\n"
        "Every other recipient got their copy. This one is held and goes out after the\n"
        f"lift; the security contact ({lst.security_contact}) was told.\n"
    )
    subject = f"[{lst.name}] {stopped.advisory_id}: a copy of your post was not sent"
    reason = f"delivery {delivery.id} held for {stopped.advisory_id}"
    if isinstance(poster, Member):
        notices.enqueue_member_notice(
            session,
            spool,
            members=[poster],
            subject=subject,
            text=text,
            list_domain=lst.domain,
            reason=reason,
            advisory_id=stopped.advisory_id,
        )
    else:
        notices.enqueue_advisory_notice(
            session,
            spool,
            recipients=[poster.address],
            subject=subject,
            text=text,
            list_domain=lst.domain,
            reason=reason,
            advisory_id=stopped.advisory_id,
        )

"""What every handler reads: the router's standing parts (`Router`) and one post inside
its accept transaction (`Context`)."""

from __future__ import annotations

from dataclasses import dataclass
from email.message import EmailMessage
from functools import cached_property

from sqlalchemy.orm import Session

from relay.app import advisories
from relay.core.config import Settings
from relay.core.crypto import Crypto
from relay.inbound import VerifiedPost, keywords
from relay.inbound.router.advisory import advisory_of
from relay.leaks import external_copies
from relay.leaks.index import EmbargoedText
from relay.model import Advisory, Member, Sender
from relay.policy import forwarding
from relay.policy.posting import PostingPolicy, posting_for
from relay.policy.timing import TimingPolicy
from relay.store import incoming
from relay.store.key_owners import member_for, sender_for
from relay.store.spool import Spool


@dataclass(frozen=True)
class Router:
    """The router's standing parts, loaded once when the edge starts."""

    settings: Settings
    crypto: Crypto  # the relay's keyring: for the keys an X-Share post brings
    watch: EmbargoedText  # the index of embargoed text
    timing: TimingPolicy
    posting: PostingPolicy
    forwarding: forwarding.ForwardingPolicy

    @classmethod
    def load(
        cls, settings: Settings, spool: Spool, crypto: Crypto, watch: EmbargoedText | None = None
    ) -> Router:
        """Read the list's policy files; a new index of embargoed text unless one is shared."""
        return cls(
            settings,
            crypto,
            watch or EmbargoedText(spool),
            advisories.policy_for(settings),
            posting_for(settings),
            forwarding.load_forwarding(settings.embargo.policy),
        )


@dataclass(frozen=True)
class Context:
    """One verified post inside its accept transaction, attributed to its signing key's
    registered owner alone: the envelope sender and the From header are unsigned."""

    router: Router
    session: Session
    spool: Spool
    message_id: str  # the id the post is being accepted under
    post: VerifiedPost  # what the signature covers
    found: dict[str, str]  # the keyword lines of its signed part
    intake: incoming.Post  # what the relay believes: the payload without those lines, the poster
    message: EmailMessage  # the whole post, strictly parsed
    to: external_copies.Addressed  # its recipients besides the list
    sender: Sender | None  # the signing key's owner, if a sender
    member: Member | None  # and if a member (a sender may be one too)

    @classmethod
    def of(
        cls,
        router: Router,
        session: Session,
        spool: Spool,
        message_id: str,
        post: VerifiedPost,
        found: dict[str, str],
        intake: incoming.Post,
        message: EmailMessage,
    ) -> Context:
        """The context of `post`: whose its signing key is, whom it is addressed to."""
        member = member_for(session, post.signer)
        to = external_copies.addressed(message, post.protected, router.settings.list.address)
        sender = sender_for(session, post.signer)
        return cls(
            router, session, spool, message_id, post, found, intake, message, to, sender, member
        )

    @property
    def actor(self) -> str:
        """Who the audit trail says acted: the signing key."""
        return f"key:{self.post.signer}"

    @property
    def posting_member(self) -> Member | None:
        """The member whose post this is: a sender's post is the list's, from a member too."""
        return self.member if self.sender is None else None

    @cached_property
    def advisory(self) -> Advisory:
        """The advisory a member's post is about (advisory.py): looked for once, by the
        first handler that needs it; the post is refused when it names none."""
        return advisory_of(
            self.session,
            self.router.watch,
            self.router.settings.list.domain,
            self.found,
            self.post,
            self.intake.payload,
        )

    def copy_subject(self, advisory: Advisory) -> str:
        """The copies' Subject, from signed data only: the protected Subject, an X-Title
        line, else the advisory's ID and title (set from signed data or by an administrator)."""
        signed = self.post.subject or self.found.get(keywords.TITLE)
        if signed:
            return signed
        if advisory.title and advisory.title != advisory.id:
            return f"{advisory.id}: {advisory.title}"
        return advisory.id

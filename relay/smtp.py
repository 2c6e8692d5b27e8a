"""The SMTP edge: aiosmtpd hooks that admit posts for the list address only.

The protocol stays in aiosmtpd; this module implements `handle_MAIL`,
`handle_RCPT` and `handle_DATA`. DATA runs the inbound checks (wire, MIME
structure, signature), reads the keyword lines of the signed part (the post's
advisory and embargo time) and makes the post durable, in worker threads; it
answers `250` only after the queue transaction has committed. Any unexpected failure
answers `451`, so the sender keeps the message and retries.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime
from email.message import EmailMessage
from email.utils import getaddresses

from aiosmtpd.smtp import SMTP, Envelope
from aiosmtpd.smtp import Session as SmtpSession

from relay import advisories, incidents, keywords, posts, queue
from relay.config import Settings
from relay.crypto import Crypto
from relay.db import Database
from relay.inbound import (
    Rejection,
    VerifiedPost,
    check_structure,
    check_wire,
    freshness,
    verify_post,
)
from relay.keystore import Owner, owner_of
from relay.logs import clean, event
from relay.models import utcnow
from relay.spool import Spool
from relay.watch import EmbargoedText

log = logging.getLogger("relay.smtp")

# Replies, with enhanced status codes (RFC 3463).
OK = "250 2.1.0 OK"
RCPT_OK = "250 2.1.5 OK"
QUEUED = "250 2.0.0 Queued as {id}"
NO_SUCH_LIST = "550 5.1.1 No such list here; this server relays for no one"
TOO_MANY_RCPTS = "452 4.5.3 Too many recipients"
TOO_BIG = "552 5.3.4 Message too big for this list"
TRY_LATER = "451 4.3.0 Temporary failure, please try again later"

# aiosmtpd's own replies that lack enhanced status codes.
_REWRITES = {
    "552 Error: Too much mail data": TOO_BIG,
    "552 Error: message size exceeds fixed maximum message size": TOO_BIG,
    "500 Line too long (see RFC5321 4.5.3.1.6)": "500 5.5.2 Line too long",
}


class RelaySMTP(SMTP):
    """aiosmtpd's protocol with enhanced status codes on its built-in replies."""

    async def push(self, status: str | bytes) -> None:  # type: ignore[override]
        if isinstance(status, str):
            status = _REWRITES.get(status, status)
        await super().push(status)


class ListHandler:
    """The application side of the SMTP edge."""

    def __init__(
        self,
        settings: Settings,
        db: Database,
        spool: Spool,
        crypto: Crypto,
        on_accept: Callable[[], None] = lambda: None,
        on_schedule: Callable[[str, datetime | None], None] = lambda advisory, lift_at: None,
        watch: EmbargoedText | None = None,
    ) -> None:
        self.settings = settings
        self.db = db
        self.spool = spool
        self.crypto = crypto
        self.on_accept = on_accept
        self.on_schedule = on_schedule
        self.router = posts.PostRouter(settings, spool, crypto, watch)
        self.replays_refused = 0  # since start; each signature's own count is in the database

    async def handle_MAIL(
        self,
        server: SMTP,
        session: SmtpSession,
        envelope: Envelope,
        address: str,
        options: list[str],
    ) -> str:
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return OK

    async def handle_RCPT(
        self,
        server: SMTP,
        session: SmtpSession,
        envelope: Envelope,
        address: str,
        options: list[str],
    ) -> str:
        if address.lower() != self.settings.list.address:
            event(log, "rejected", peer=session.peer, rcpt=address, code="550 5.1.1")
            return NO_SUCH_LIST
        if len(envelope.rcpt_tos) >= self.settings.smtp.max_recipients:
            return TOO_MANY_RCPTS
        envelope.rcpt_tos.append(address)  # repeats count toward the limit too
        return RCPT_OK

    async def handle_DATA(self, server: SMTP, session: SmtpSession, envelope: Envelope) -> str:
        raw = envelope.original_content or b""
        if len(raw) > self.settings.smtp.max_message_size:
            return TOO_BIG
        try:
            accepted, outcome = await asyncio.to_thread(self._accept, raw, envelope.mail_from or "")
        except Rejection as rejection:
            event(
                log,
                "rejected",
                peer=session.peer,
                mail_from=envelope.mail_from,
                code=f"{rejection.code} {rejection.status}",
                reason=rejection.text,
            )
            return rejection.reply
        except Exception:
            log.exception("accept failed; answered 451 peer=%s", clean(session.peer))
            return TRY_LATER
        event(
            log,
            "accepted",
            id=accepted.message_id,
            peer=session.peer,
            mail_from=envelope.mail_from,
            size=len(raw),
            deliveries=accepted.deliveries,
            advisory=accepted.advisory_id,
            member=outcome.member or "-",
            held=bool(outcome.routing and outcome.routing.hold),
        )
        change = outcome.change
        if change is not None and (change.created or change.moved):
            self.on_schedule(change.advisory.id, change.new)
        self.on_accept()
        return QUEUED.format(id=accepted.message_id)

    def _accept(self, raw: bytes, mail_from: str) -> tuple[queue.Accepted, posts.Outcome]:
        """Validate, verify and commit; raises Rejection for anything refused."""
        check_wire(raw)
        message: EmailMessage = check_structure(raw)
        post = verify_post(raw, message, self.crypto, self._is_authorised)
        verified = self._believe(raw, post, message, mail_from)
        try:
            found, payload = keywords.extract(post.payload)
        except keywords.KeywordError as exc:
            raise Rejection(550, "5.6.0", f"keyword lines: {exc}") from None
        verified = replace(verified, payload=payload)
        outcome = posts.Outcome()
        try:
            accepted = queue.accept_post(
                self.db,
                self.spool,
                verified,
                list_domain=self.settings.list.domain,
                route=lambda session, spool, message_id: self.router.route(
                    session, spool, message_id, post, found, verified, message, outcome
                ),
            )
        except posts.ReportedRefusal as refusal:
            # Refused, and reported all the same: the leak happened (or was attempted).
            try:
                incidents.record_refusal(
                    self.db, self.spool, self.settings, verified, leaks=refusal.leaks, now=utcnow()
                )
            except queue.AlreadyReceived as exc:
                raise self._replayed(exc.digest, str(exc)) from None
            raise
        except queue.AlreadyReceived as exc:
            raise self._replayed(exc.digest, str(exc)) from None
        except advisories.EmbargoTimeUnreadable as exc:
            raise Rejection(550, "5.6.0", _one_line(str(exc))) from None
        except advisories.AdvisoryError as exc:
            raise Rejection(550, "5.7.1", _one_line(str(exc))) from None
        change = outcome.change
        for warning in change.warnings if change else ():
            event(
                log,
                "policy-warning",
                advisory=change.advisory.id,
                rule=warning.rule,
                detail=warning.message,
            )
        return accepted, outcome

    def _believe(
        self, raw: bytes, post: VerifiedPost, message: EmailMessage, mail_from: str
    ) -> queue.Post:
        """What the relay believes of a verified post, and nothing more: the signature is
        fresh and used for the first time, and the post is attributed to the signing key's
        registered owner, whose From address it must carry. Raises Rejection otherwise."""
        intake = self.settings.intake
        arrived = utcnow()
        freshness.check_fresh(
            post.signed_at, arrived, max_age=intake.max_signature_age, skew=intake.max_clock_skew
        )
        used = queue.used_signature(self.db, post.identity)
        if used is not None:
            raise self._replayed(used.digest, str(queue.AlreadyReceived(used)))
        with self.db.transaction() as session:
            owner = owner_of(session, post.signer)
        if owner is None:  # authorised a moment ago, removed since
            raise Rejection(550, "5.7.1", "the signing key is not authorised to post to this list")
        mismatch = _from_mismatch(message, post, owner)
        if mismatch is not None and intake.from_mismatch == "refuse":
            raise Rejection(
                550,
                "5.7.1",
                f"From: {mismatch} is not an address of the signer (key {post.signer} "
                f"belongs to {owner.address}); send from your registered address",
            )
        return queue.Post(
            raw=raw,
            payload=post.payload,
            subject=post.subject,
            mail_from=mail_from,
            signer=post.signer,
            original_message_id=_header(message, "Message-ID"),
            signed_at=post.signed_at,
            signature=post.identity,
            poster=owner.address,
            from_mismatch=mismatch,
        )

    def _replayed(self, digest: str, text: str) -> Rejection:
        """Refuse a replay: counted on the signature's record, changing nothing else."""
        try:
            queue.count_replay(self.db, digest, utcnow())
        except Exception:  # the count is evidence, not a condition of the refusal
            log.exception("could not count a replay")
        self.replays_refused += 1
        return Rejection(550, "5.7.1", text)

    def _is_authorised(self, fingerprint: str) -> bool:
        with self.db.transaction() as session:
            return self.router.is_authorised(session, fingerprint)


def _from_mismatch(message: EmailMessage, post: VerifiedPost, owner: Owner) -> str | None:
    """The From address (outer, or the signed protected one) that is not the signer's own.

    The outer From is unsigned; it is checked so that what members' clients show as the
    author is never someone the signature does not stand for. A missing or unreadable
    From, or more than one address in it, counts as a mismatch."""
    values = [_header(message, "From") or ""]
    if "from" in post.protected:
        values.append(post.protected["from"])
    for value in values:
        addresses = [a for _, a in getaddresses([value]) if a]
        if len(addresses) != 1:
            return value.strip() or "(none)"
        if not owner.owns_from(addresses[0]):
            return addresses[0].lower()
    return None


def _one_line(text: str) -> str:
    """SMTP replies are single lines: fold an explanation (with its accepted forms) into one."""
    return "; ".join(line.strip() for line in text.splitlines() if line.strip())


def _header(message: EmailMessage, name: str) -> str | None:
    try:
        value = message.get(name)
    except (ValueError, IndexError):
        return None
    return str(value)[:998] if value is not None else None


def make_server_factory(handler: ListHandler, settings: Settings) -> Callable[[], RelaySMTP]:
    hostname = settings.smtp.hostname or settings.list.domain

    def factory() -> RelaySMTP:
        return RelaySMTP(
            handler,
            data_size_limit=settings.smtp.max_message_size,
            hostname=hostname,
            ident="Embargo Relay",
            decode_data=False,
        )

    return factory

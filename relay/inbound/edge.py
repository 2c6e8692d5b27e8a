"""The SMTP edge: aiosmtpd's handler hooks, which admit posts for the list address only.

The protocol is protocol.py's (`RelaySMTP`: what one client may cost, enhanced status
codes); `ListHandler` implements `handle_MAIL`, `handle_RCPT` and `handle_DATA`. DATA
runs the inbound checks (admission.py): the unauthenticated part, up to the signature
check, in the intake pool; the rest (the strict parse, what the relay believes of the
post, the keyword lines of its signed part, the durable accept and its routing) in the
pool of signed posts, so junk never waits in front of a signed post. It answers `250`
only after the queue transaction has committed. Any unexpected failure answers `451`,
so the sender keeps the message and retries. The list's bounce addresses (VERP, one per
copy sent) take bounces instead, alone in their transaction, read and applied in the
intake pool and never distributed (relay/inbound/bounces.py).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime

from aiosmtpd.smtp import SMTP, Envelope
from aiosmtpd.smtp import Session as SmtpSession
from sqlalchemy.orm import Session

from relay.app import advisories, incidents
from relay.app import bounces as app_bounces
from relay.core.config import Settings
from relay.core.crypto import Crypto
from relay.core.database import Database
from relay.core.logs import clean, event
from relay.inbound import Authenticated, Rejection, authenticate, bounces, keywords, router
from relay.inbound.belief import believe
from relay.inbound.limits import Busy, WorkPool
from relay.inbound.replies import (
    BUSY,
    NO_SUCH_LIST,
    OK,
    QUEUED,
    RCPT_OK,
    TOO_BIG,
    TOO_MANY_RCPTS,
    TRY_LATER,
)
from relay.leaks.index import EmbargoedText
from relay.model import utcnow
from relay.store import incoming
from relay.store.spool import Spool

log = logging.getLogger("relay.smtp")

# Threads for posts: the unauthenticated part of every post (pre-scan done, header parse,
# gpg) in one pool, posts whose signature is good in another. Beyond workers + waiting,
# a post is answered BUSY at once.
INTAKE_WORKERS, INTAKE_WAITING = 2, 8
POST_WORKERS, POST_WAITING = 2, 32


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
        self.router = router.Router.load(settings, spool, crypto, watch)
        self.replays_refused = 0  # since start; each signature's own count is in the database
        # Unauthenticated work (up to the signature check) and signed posts, kept apart.
        self.intake = WorkPool(INTAKE_WORKERS, INTAKE_WAITING, "relay-intake")
        self.posting = WorkPool(POST_WORKERS, POST_WAITING, "relay-post")

    def shutdown(self) -> None:
        """Stop the worker threads: a post waiting for one is dropped unanswered (its MTA
        retries; nothing was committed), one being worked on finishes."""
        self.intake.shutdown()
        self.posting.shutdown()

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
        list_address = self.settings.list.address
        token = bounces.token_of(address, list_address)
        if token is None and address.lower() != list_address:
            event(log, "rejected", peer=session.peer, rcpt=address, code="550 5.1.1")
            return NO_SUCH_LIST
        # A bounce address is alone in its transaction (inbound/bounces.py).
        if token is not None and envelope.rcpt_tos:
            return bounces.SEPARATELY
        if token is None and bounces.bounce_of(envelope.rcpt_tos, list_address) is not None:
            return bounces.SEPARATELY
        if token is not None:
            if bounces.too_big(envelope.mail_options, self.settings.smtp.max_bounce_size):
                return bounces.TOO_BIG
            try:
                known = await self.intake.run(app_bounces.recipient_for, self.db, token)
            except Busy:
                return BUSY
            except Exception:
                log.exception("bounce address lookup failed; answered 451")
                return TRY_LATER
            if known is None:
                event(log, "rejected", peer=session.peer, rcpt=address, code="550 5.1.1")
                return NO_SUCH_LIST
        elif len(envelope.rcpt_tos) >= self.settings.smtp.max_recipients:
            return TOO_MANY_RCPTS
        envelope.rcpt_tos.append(address)  # repeats count toward the limit too
        return RCPT_OK

    async def _bounce_data(self, session: SmtpSession, raw: bytes, token: str) -> str:
        """DATA to a bounce address: read and applied in the intake pool, never distributed."""
        if len(raw) > self.settings.smtp.max_bounce_size:
            event(log, "rejected", peer=session.peer, bounce=True, code="552 5.3.4")
            return bounces.TOO_BIG
        try:
            applied = await self.intake.run(
                bounces.receive, self.db, self.spool, self.settings, raw, token, utcnow()
            )
        except Busy:
            return BUSY
        except Rejection as rejection:
            code = f"{rejection.code} {rejection.status}"
            event(log, "rejected", peer=session.peer, bounce=True, code=code, reason=rejection.text)
            return rejection.reply
        except Exception:
            log.exception("bounce failed; answered 451 peer=%s", clean(session.peer))
            return TRY_LATER
        if applied.notice is not None:
            self.on_accept()  # the security contact's notice is queued
        return bounces.RECEIVED

    async def handle_DATA(self, server: SMTP, session: SmtpSession, envelope: Envelope) -> str:
        raw = envelope.original_content or b""
        token = bounces.bounce_of(envelope.rcpt_tos, self.settings.list.address)
        if token is not None:
            return await self._bounce_data(session, raw, token)
        if len(raw) > self.settings.smtp.max_message_size:
            return TOO_BIG
        mail_from = envelope.mail_from or ""
        try:
            # A flood of junk waits, or is turned away, in the intake pool: never in
            # front of a post whose signature is good.
            shape = getattr(envelope, "shape", None)  # RelaySMTP pre-scanned while reading
            authenticated = await self.intake.run(
                authenticate, raw, self.crypto, self._is_authorised, shape
            )
            accepted, report = await self.posting.run(self._accept, raw, mail_from, authenticated)
        except Busy:
            event(log, "busy", peer=session.peer, mail_from=envelope.mail_from, code="451 4.3.2")
            return BUSY
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
            member=report.member or "-",
            held=bool(report.routing.hold),
            tls=getattr(session, "tls", None) or "-",
        )
        change = report.change
        if change is not None and (change.created or change.moved):
            self.on_schedule(change.advisory.id, change.new)
        self.on_accept()
        return QUEUED.format(id=accepted.message_id)

    def _accept(
        self, raw: bytes, mail_from: str, authenticated: Authenticated | None = None
    ) -> tuple[incoming.Accepted, router.RouteReport]:
        """Validate, verify, route and commit; raises Rejection for anything refused.

        `authenticated`: the signature check of `raw`, when the caller made it already."""
        checked = authenticated or authenticate(raw, self.crypto, self._is_authorised)
        message, post = checked.admit()
        try:
            verified = believe(self.db, self.settings.intake, raw, post, message, mail_from)
        except incoming.AlreadyReceived as exc:
            raise self._replayed(exc.digest, str(exc)) from None
        try:
            found, payload = keywords.extract(post.payload)
        except keywords.KeywordError as exc:
            raise Rejection(550, "5.6.0", f"keyword lines: {exc}") from None
        verified = replace(verified, payload=payload)
        # accept_post returns what it stored; the report comes back through its callback.
        reports: list[router.RouteReport] = []

        def route(session: Session, spool: Spool, message_id: str) -> incoming.Routing:
            context = router.Context.of(
                self.router, session, spool, message_id, post, found, verified, message
            )
            reports.append(router.route(context))
            return reports[-1].routing

        try:
            accepted = incoming.accept_post(
                self.db, self.spool, verified, list_domain=self.settings.list.domain, route=route
            )
        except router.ReportedRefusal as refusal:
            # Refused, and reported all the same: the leak happened (or was attempted).
            try:
                incidents.record_refusal(
                    self.db, self.spool, self.settings, verified, leaks=refusal.leaks, now=utcnow()
                )
            except incoming.AlreadyReceived as exc:
                raise self._replayed(exc.digest, str(exc)) from None
            raise
        except incoming.AlreadyReceived as exc:
            raise self._replayed(exc.digest, str(exc)) from None
        except advisories.EmbargoTimeUnreadable as exc:
            raise Rejection(550, "5.6.0", _one_line(str(exc))) from None
        except advisories.AdvisoryError as exc:
            raise Rejection(550, "5.7.1", _one_line(str(exc))) from None
        report = reports[-1]
        change = report.change
        for warning in change.warnings if change else ():
            assert change is not None
            event(
                log,
                "policy-warning",
                advisory=change.advisory.id,
                rule=warning.rule,
                detail=warning.message,
            )
        return accepted, report

    def _replayed(self, digest: str, text: str) -> Rejection:
        """Refuse a replay: counted on the signature's record, changing nothing else."""
        try:
            incoming.count_replay(self.db, digest, utcnow())
        except Exception:  # the count is evidence, not a condition of the refusal
            log.exception("could not count a replay")
        self.replays_refused += 1
        return Rejection(550, "5.7.1", text)

    def _is_authorised(self, fingerprint: str) -> bool:
        with self.db.transaction() as session:
            return router.is_authorised(session, fingerprint)


def _one_line(text: str) -> str:
    """SMTP replies are single lines: fold an explanation (with its accepted forms) into one."""
    return "; ".join(line.strip() for line in text.splitlines() if line.strip())

"""The SMTP edge: aiosmtpd hooks that admit posts for the list address only.

The protocol stays in aiosmtpd; `RelaySMTP` bounds what one client may cost it
(connections, idle time, bad commands; DATA read in chunks and pre-scanned as it
arrives, relay/smtp_data.py) and `ListHandler` implements `handle_MAIL`, `handle_RCPT`
and `handle_DATA`. DATA runs the inbound checks (relay/inbound/admission.py): the
unauthenticated part, up to the signature check, in the intake pool; the rest (the
strict parse, the keyword lines of the signed part, the durable accept) in the pool of
signed posts, so junk never waits in front of a signed post. It answers `250` only
after the queue transaction has committed. Any unexpected failure answers `451`, so
the sender keeps the message and retries.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime
from email.message import EmailMessage
from typing import Any

from aiosmtpd.smtp import MISSING, SMTP, Envelope, syntax
from aiosmtpd.smtp import Session as SmtpSession

from relay.app import advisories, incidents
from relay.core import addresses
from relay.core.config import Settings
from relay.core.crypto import Crypto
from relay.core.database import Database
from relay.core.logs import clean, event
from relay.core.spool import Spool
from relay.inbound import (
    Authenticated,
    Rejection,
    Shape,
    VerifiedPost,
    authenticate,
    freshness,
    keywords,
    router,
)
from relay.inbound.data import read_data
from relay.inbound.limits import Busy, ConnectionLimits, WorkPool
from relay.leaks.index import EmbargoedText
from relay.model import utcnow
from relay.store import incoming
from relay.store.key_owners import Owner, owner_of

log = logging.getLogger("relay.smtp")

# Replies, with enhanced status codes (RFC 3463).
OK = "250 2.1.0 OK"
RCPT_OK = "250 2.1.5 OK"
QUEUED = "250 2.0.0 Queued as {id}"
NO_SUCH_LIST = "550 5.1.1 No such list here; this server relays for no one"
TOO_MANY_RCPTS = "452 4.5.3 Too many recipients"
TOO_BIG = "552 5.3.4 Message too big for this list"
TRY_LATER = "451 4.3.0 Temporary failure, please try again later"
BUSY = "451 4.3.2 The relay is busy; please try again later"
IDLE = "421 4.4.2 {host} Idle too long; closing the connection"
TOO_MANY_ERRORS = "421 4.7.0 {host} Too many bad commands; closing the connection"

# Threads for posts: the unauthenticated part of every post (pre-scan done, header parse,
# gpg) in one pool, posts whose signature is good in another. Beyond workers + waiting,
# a post is answered BUSY at once.
INTAKE_WORKERS, INTAKE_WAITING = 2, 8
POST_WORKERS, POST_WAITING = 2, 32
# DATA this large counts as progress for the idle timer; a trickle slower than this per
# idle_timeout is cut.
PROGRESS_BYTES = 64 * 1024
# Seconds a connection being closed may take to read its last reply before it is dropped.
CLOSE_GRACE = 10.0

# aiosmtpd's own replies that need other words or codes.
_REWRITES = {
    "552 Error: Too much mail data": TOO_BIG,
    "552 Error: message size exceeds fixed maximum message size": TOO_BIG,
    "500 Line too long (see RFC5321 4.5.3.1.6)": "500 5.5.2 Line too long",
    "502 5.5.1 Too many unrecognized commands, goodbye.": (
        "421 4.7.0 Too many unrecognized commands; closing the connection"
    ),
}
# The enhanced status code (RFC 3463) given to a reply of aiosmtpd's that has none.
_STATUS_FOR = {
    "214": "2.0.0",
    "221": "2.0.0",
    "250": "2.0.0",
    "252": "2.5.0",
    "451": "4.3.0",
    "452": "4.3.1",
    "500": "5.5.2",
    "501": "5.5.4",
    "502": "5.5.1",
    "503": "5.5.1",
    "504": "5.5.4",
    "530": "5.7.0",
    "552": "5.3.4",
    "553": "5.1.3",
    "554": "5.7.0",
}
_HAS_STATUS = re.compile(r"\d{3}[ -][245]\.\d{1,3}\.\d{1,3}(?: |$)")


def _with_status(reply: str) -> str:
    """`reply` with an enhanced status code; 1xx and 3xx replies and the greeting take none."""
    reply = _REWRITES.get(reply, reply)
    code = reply[:3]
    if not code.isdigit() or code[0] not in "245" or code == "220" or _HAS_STATUS.match(reply):
        return reply
    status = _STATUS_FOR.get(code, f"{code[0]}.0.0")
    if code == "500" and "not recognized" in reply:
        status = "5.5.1"
    return f"{code}{reply[3:4] or ' '}{status} {reply[4:]}".rstrip()


class _Envelope(Envelope):
    """aiosmtpd's envelope, with the pre-scan of the content that DATA read."""

    shape: Shape | None = None


class RelaySMTP(SMTP):
    """aiosmtpd's protocol, with what one client may cost the relay bounded.

    - Every reply carries an enhanced status code (ENHANCEDSTATUSCODES is advertised),
      except the greeting, the HELO/EHLO answer (RFC 2034) and the 354 that asks for
      the data (RFC 3463 has no class 3).
    - A connection beyond `[smtp] max_connections`, or `max_connections_per_ip` from
      one address, is answered `421 4.7.0` and closed before anything is read.
    - The idle timer (`[smtp] idle_timeout`) is reset by progress only: a completed
      mail transaction, or another PROGRESS_BYTES of DATA. aiosmtpd resets it on every
      command, so NOOP, RSET, HELP or VRFY kept a session forever. It is held while
      the relay itself works on a post. When it runs out: `421 4.4.2`, closed.
    - `[smtp] max_bad_commands` replies with a 5xx code to commands (unknown, out of
      sequence, bad syntax, a recipient refused) end the session with `421 4.7.0`.
      A refused post does not count: it is a finished transaction. aiosmtpd's own
      limit of five unknown commands answers the same way.
    - DATA is read in chunks (relay/smtp_data.py): the wire check and the pre-scan run
      as the bytes arrive, and a refused post is drained, never kept.
    """

    def __init__(
        self,
        handler: object,
        *,
        limits: ConnectionLimits | None = None,
        max_bad_commands: int = 10,
        **kwargs: object,
    ) -> None:
        super().__init__(handler, **kwargs)  # type: ignore[arg-type]
        self._limits = limits
        self._max_bad_commands = max_bad_commands
        self._bad_commands = 0
        self._address: str | None = None  # counted in `limits` while the session is open
        self._refused = False
        self._in_ehlo = False  # answering HELO or EHLO: no enhanced status codes
        self._answering_data = False
        self._flowed = 0  # DATA bytes since the last progress
        self._drop: asyncio.TimerHandle | None = None

    # Connections

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self.transport is None and self._limits is not None:  # not a STARTTLS re-entry
            peer = transport.get_extra_info("peername")
            address = str(peer[0]) if peer else "-"
            why = self._limits.admit(address)
            if why is not None:
                self._refused = True
                event(log, "refused", peer=peer, code="421 4.7.0", reason=why)
                assert isinstance(transport, asyncio.WriteTransport)
                transport.write(f"421 4.7.0 {why}\r\n".encode("ascii"))
                transport.close()
                return
            self._address = address
        super().connection_made(transport)

    def connection_lost(self, error: Exception | None) -> None:
        if self._refused:
            return  # aiosmtpd never saw this connection
        if self._address is not None and self._limits is not None:
            self._limits.release(self._address)
            self._address = None
        if self._drop is not None:
            self._drop.cancel()
        super().connection_lost(error)

    def _close_with(self, reply: str) -> None:
        """Send a last reply, end the session and close; drop it if the client does not read."""
        transport = self.transport
        if not isinstance(transport, asyncio.WriteTransport) or transport.is_closing():
            return
        transport.write(reply.encode("ascii") + b"\r\n")
        if self._handler_coroutine is not None:
            self._handler_coroutine.cancel()
        transport.close()
        self._drop = self.loop.call_later(CLOSE_GRACE, transport.abort)

    # The idle timer

    def _reset_timeout(self, duration: float | None = None) -> None:
        # aiosmtpd calls this when the session opens and before every command it knows;
        # here only the first call arms the timer. Progress re-arms it (_progress).
        if self._timeout_handle is None:
            super()._reset_timeout(duration)

    def _progress(self) -> None:
        self._flowed = 0
        if self.transport is not None:
            super()._reset_timeout()

    def _hold_timer(self) -> None:
        if self._timeout_handle is not None:
            self._timeout_handle.cancel()

    def _data_flowed(self, size: int) -> None:
        self._flowed += size
        if self._flowed >= PROGRESS_BYTES:
            self._progress()

    def _timeout_cb(self) -> None:
        peer = self.session.peer if self.session else "-"
        event(log, "idle-timeout", peer=peer, code="421 4.4.2")
        self._close_with(IDLE.format(host=self.hostname))

    # Replies

    async def push(self, status: Any) -> None:
        bad = False
        if isinstance(status, str):
            if self._in_ehlo and status == "250 HELP":
                await super().push("250-ENHANCEDSTATUSCODES")
            if not (self._in_ehlo and status.startswith("250")):
                status = _with_status(status)
            bad = status.startswith("5") and not self._answering_data
        await super().push(status)
        if bad:
            self._bad_commands += 1
            if self._bad_commands >= self._max_bad_commands:
                event(log, "too-many-errors", peer=self.session.peer if self.session else "-")
                self._close_with(TOO_MANY_ERRORS.format(host=self.hostname))

    async def handle_exception(self, error: Exception) -> str:
        peer = self.session.peer if self.session else "-"
        log.exception("SMTP session error; answered 451 peer=%s", clean(peer))
        return TRY_LATER

    @syntax("HELO hostname")
    async def smtp_HELO(self, hostname: str) -> None:
        self._in_ehlo = True
        try:
            await super().smtp_HELO(hostname)
        finally:
            self._in_ehlo = False

    @syntax("EHLO hostname")
    async def smtp_EHLO(self, hostname: str) -> None:
        self._in_ehlo = True
        try:
            await super().smtp_EHLO(hostname)
        finally:
            self._in_ehlo = False

    # DATA

    def _create_envelope(self) -> Envelope:
        return _Envelope()

    @syntax("DATA")
    async def smtp_DATA(self, arg: str) -> None:
        if await self.check_helo_needed() or await self.check_auth_needed("DATA"):
            return
        envelope = self.envelope
        assert isinstance(envelope, _Envelope) and self.session is not None
        if not envelope.rcpt_tos:
            await self.push("503 5.5.1 Error: need RCPT command")
            return
        if arg:
            await self.push("501 5.5.4 Syntax: DATA")
            return
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        self._flowed = 0
        received = await read_data(
            self._reader,
            size_limit=self.data_size_limit,
            line_limit=self.line_length_limit,
            on_bytes=self._data_flowed,
        )
        if received is None:  # the client went away
            return
        self._hold_timer()  # the relay's own work is no client's idling
        self._answering_data = True
        try:
            if received.refusal is not None:
                refusal = received.refusal
                event(
                    log,
                    "rejected",
                    peer=self.session.peer,
                    mail_from=envelope.mail_from,
                    code=f"{refusal.code} {refusal.status}",
                    reason=refusal.text,
                )
                status: object = refusal.reply
            else:
                envelope.content = envelope.original_content = received.content
                envelope.shape = received.shape
                status = await self._call_handler_hook("DATA")
            self._set_post_data_state()
            await self.push("250 2.0.0 OK" if status is MISSING else str(status))
        finally:
            self._answering_data = False
        self._progress()  # a completed mail transaction


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
        self.router = router.PostRouter(settings, spool, crypto, watch)
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
        mail_from = envelope.mail_from or ""
        try:
            # A flood of junk waits, or is turned away, in the intake pool: never in
            # front of a post whose signature is good.
            shape = getattr(envelope, "shape", None)  # RelaySMTP pre-scanned while reading
            authenticated = await self.intake.run(
                authenticate, raw, self.crypto, self._is_authorised, shape
            )
            accepted, outcome = await self.posting.run(self._accept, raw, mail_from, authenticated)
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
            member=outcome.member or "-",
            held=bool(outcome.routing and outcome.routing.hold),
        )
        change = outcome.change
        if change is not None and (change.created or change.moved):
            self.on_schedule(change.advisory.id, change.new)
        self.on_accept()
        return QUEUED.format(id=accepted.message_id)

    def _accept(
        self, raw: bytes, mail_from: str, authenticated: Authenticated | None = None
    ) -> tuple[incoming.Accepted, router.RouteReport]:
        """Validate, verify and commit; raises Rejection for anything refused.

        `authenticated`: the signature check of `raw`, when the caller made it already."""
        checked = authenticated or authenticate(raw, self.crypto, self._is_authorised)
        message, post = checked.admit()
        verified = self._believe(raw, post, message, mail_from)
        try:
            found, payload = keywords.extract(post.payload)
        except keywords.KeywordError as exc:
            raise Rejection(550, "5.6.0", f"keyword lines: {exc}") from None
        verified = replace(verified, payload=payload)
        outcome = router.RouteReport()
        try:
            accepted = incoming.accept_post(
                self.db,
                self.spool,
                verified,
                list_domain=self.settings.list.domain,
                route=lambda session, spool, message_id: self.router.route(
                    session, spool, message_id, post, found, verified, message, outcome
                ),
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
        change = outcome.change
        for warning in change.warnings if change else ():
            assert change is not None
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
    ) -> incoming.Post:
        """What the relay believes of a verified post, and nothing more: the signature is
        fresh and used for the first time, and the post is attributed to the signing key's
        registered owner, whose From address it must carry. Raises Rejection otherwise."""
        intake = self.settings.intake
        arrived = utcnow()
        freshness.check_fresh(
            post.signed_at, arrived, max_age=intake.max_signature_age, skew=intake.max_clock_skew
        )
        used = incoming.used_signature(self.db, post.identity)
        if used is not None:
            raise self._replayed(used.digest, str(incoming.AlreadyReceived(used)))
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
        return incoming.Post(
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
            incoming.count_replay(self.db, digest, utcnow())
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
        try:
            found = addresses.from_header("From", value)
        except addresses.AddressRefused as exc:
            raise Rejection(550, "5.1.3", str(exc)) from None
        if len(found) != 1:
            return value.strip() or "(none)"
        if not owner.owns_from(found[0]):
            return found[0]
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
    smtp = settings.smtp
    hostname = smtp.hostname or settings.list.domain
    limits = ConnectionLimits(smtp.max_connections, smtp.max_connections_per_ip)

    def factory() -> RelaySMTP:
        return RelaySMTP(
            handler,
            limits=limits,
            max_bad_commands=smtp.max_bad_commands,
            data_size_limit=smtp.max_message_size,
            hostname=hostname,
            ident="Embargo Relay",
            decode_data=False,
            timeout=smtp.idle_timeout.total_seconds(),
        )

    return factory

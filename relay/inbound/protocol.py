"""The SMTP protocol: aiosmtpd's, with what one client may cost the relay bounded.

`RelaySMTP` is the protocol alone; what a command means for the list is the handler's
(edge.py, aiosmtpd's handler hooks). DATA is read in chunks and pre-scanned as it
arrives (data.py), and a refused post is drained, never kept. STARTTLS is aiosmtpd's
(RFC 3207), with the context of `ServerTLS` (tls.py) as it is when the client asks.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiosmtpd.smtp import MISSING, SMTP, Envelope, Session, TLSSetupException, syntax

from relay.core.logs import clean, event
from relay.inbound import Shape
from relay.inbound.data import read_data
from relay.inbound.limits import ConnectionLimits
from relay.inbound.replies import ALREADY_TLS, IDLE, TOO_MANY_ERRORS, TRY_LATER, with_status
from relay.inbound.tls import ServerTLS

log = logging.getLogger("relay.smtp")

# DATA this large counts as progress for the idle timer; a trickle slower than this per
# idle_timeout is cut.
PROGRESS_BYTES = 64 * 1024
# Seconds a connection being closed may take to read its last reply before it is dropped.
CLOSE_GRACE = 10.0


class _Envelope(Envelope):
    """aiosmtpd's envelope, with the pre-scan of the content that DATA read."""

    shape: Shape | None = None


class _Session(Session):
    """aiosmtpd's session, with the TLS it runs under once STARTTLS is done: the version
    (for example "TLSv1.3") and the cipher, None before."""

    tls: str | None = None
    tls_cipher: str | None = None


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
    - DATA is read in chunks (data.py): the wire check and the pre-scan run
      as the bytes arrive, and a refused post is drained, never kept.
    - STARTTLS (RFC 3207) when `tls` is given: advertised before TLS only, with the
      context `tls` holds when the client asks (a reload changes new sessions only);
      `require_starttls` refuses MAIL and the rest before it with 530 5.7.0. After the
      handshake the session starts over (EHLO again; bytes the client sent behind
      STARTTLS are discarded, aiosmtpd's doing), its version and cipher are logged and
      kept on the session (`_Session.tls`); STARTTLS again is 503 5.5.1; a failed
      handshake closes the connection. The relay takes no SMTP AUTH, so none is
      advertised under TLS either.
    """

    def __init__(
        self,
        handler: object,
        *,
        limits: ConnectionLimits | None = None,
        max_bad_commands: int = 10,
        tls: ServerTLS | None = None,
        require_starttls: bool = False,
        **kwargs: object,
    ) -> None:
        super().__init__(
            handler,
            tls_context=tls.context if tls is not None else None,
            require_starttls=require_starttls,
            **kwargs,  # type: ignore[arg-type]
        )
        self._tls = tls
        self._auth_methods.clear()  # no SMTP AUTH: the signature is what counts
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
        if self.session is not None and self.session.ssl is not None:  # STARTTLS done
            self._tls_up(self.session)

    def _tls_up(self, session: Session) -> None:
        assert isinstance(session, _Session) and session.ssl is not None
        ssl_object = session.ssl.get("ssl_object")
        cipher = session.ssl.get("cipher")
        session.tls = ssl_object.version() if ssl_object is not None else None
        session.tls_cipher = cipher[0] if cipher else None
        event(log, "tls", peer=session.peer, version=session.tls, cipher=session.tls_cipher)

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
            if self._in_ehlo and status.startswith("250-AUTH"):
                return  # nothing to offer (no mechanisms), not advertised
            if self._in_ehlo and status == "250 HELP":
                await super().push("250-ENHANCEDSTATUSCODES")
            if not (self._in_ehlo and status.startswith("250")):
                status = with_status(status)
            bad = status.startswith("5") and not self._answering_data
        await super().push(status)
        if bad:
            self._bad_commands += 1
            if self._bad_commands >= self._max_bad_commands:
                event(log, "too-many-errors", peer=self.session.peer if self.session else "-")
                self._close_with(TOO_MANY_ERRORS.format(host=self.hostname))

    async def handle_exception(self, error: Exception) -> str:
        peer = self.session.peer if self.session else "-"
        if isinstance(error, TLSSetupException):  # aiosmtpd closes the connection
            event(log, "tls-failed", peer=peer, reason=error.__cause__ or "handshake failed")
            return TRY_LATER  # never sent
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

    # STARTTLS

    @syntax("STARTTLS", when="tls_context")
    async def smtp_STARTTLS(self, arg: str) -> None:
        if self._tls_protocol is not None:
            await self.push(ALREADY_TLS)
            return
        if self._tls is not None:
            self.tls_context = self._tls.context  # the certificate as of now (reload)
        await super().smtp_STARTTLS(arg)

    def _create_session(self) -> Session:
        return _Session(self.loop)

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

"""Handing finished copies to the next hop: the smarthost over SMTP, or an outbox folder.

A transport moves bytes and classifies the answer; it never decides policy and
never touches the queue. Every outcome is a `SendResult` (2xx sent, 4xx and
network trouble temporary, 5xx permanent); SMTP and network errors never
escape as exceptions, so one bad hop cannot take a worker down.

`SmtpTransport` keeps one connection per instance (one instance per worker) and
reuses it; the message is handed over as bytes so nothing re-flattens what was
signed. `OutboxTransport` writes each copy atomically to a folder, for tests,
dry runs and sites that pick mail up from disk.

TLS to the smarthost follows Postfix's "encrypt"/"verify" levels for a relayhost: with
`tls = "starttls"` or `"implicit"` the certificate chain and the host name are verified
(TLS 1.2 at least), and a session that cannot be secured ends before MAIL, so the copy
is deferred with the reason and never sent in plaintext instead. The one exception is a
loopback smarthost (a local front MTA, which then does the real TLS) that offers no
STARTTLS at all: plaintext is allowed there, but one that offers STARTTLS and fails it
is never used in plaintext either. SMTP AUTH is sent only over TLS, or to loopback; a
refused login defers the copy (a fault of this hop, not of the recipient), as Postfix does.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import re
import secrets
import ssl
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Literal, Protocol

import aiosmtplib

from relay.core.config import DeliverySettings, is_loopback
from relay.core.errors import ConfigError
from relay.core.logs import event
from relay.core.mime import crlf_only

log = logging.getLogger("relay.transport")

REASON_LIMIT = 300
_ADDRESS = re.compile(r"^[!-~]*$")  # printable ASCII, no spaces ("" is the null sender)


class Outcome(StrEnum):
    SENT = "sent"
    TEMPORARY = "temporary"
    PERMANENT = "permanent"


@dataclass(frozen=True)
class SendResult:
    outcome: Outcome
    code: str  # SMTP reply code ("250", "451", "550"), or "conn" / "io" without one
    reason: str  # one line, control characters escaped, at most REASON_LIMIT characters


class Transport(Protocol):
    async def send(self, sender: str, recipient: str, data: bytes) -> SendResult: ...
    async def close(self) -> None: ...


def clean_reason(text: str) -> str:
    """One printable line: control characters escaped, truncated."""
    line = "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in text.strip())
    return line if len(line) <= REASON_LIMIT else line[: REASON_LIMIT - 3] + "..."


def _reply(code: int, message: str) -> SendResult:
    if 200 <= code < 300:
        outcome = Outcome.SENT
    elif 500 <= code < 600:
        outcome = Outcome.PERMANENT
    else:
        outcome = Outcome.TEMPORARY  # 4xx, and anything out of protocol
    return SendResult(outcome, str(code), clean_reason(message))


def _trouble(exc: BaseException) -> SendResult:
    return SendResult(Outcome.TEMPORARY, "conn", clean_reason(str(exc) or type(exc).__name__))


class _NotStarted(Exception):
    """The transaction failed before the server accepted anything (safe to retry)."""


class _Unusable(Exception):
    """The session could not be made safe (TLS, AUTH): nothing was sent; `result` says why."""

    def __init__(self, result: SendResult) -> None:
        super().__init__(result.reason)
        self.result = result


TlsMode = Literal["starttls", "implicit", "none"]


@dataclass(frozen=True)
class Credentials:
    user: str
    password: str = field(repr=False)


def needs_tls(host: str, mode: TlsMode) -> bool:
    """Whether copies to `host` may only go over TLS.

    Always with "implicit"; with "starttls" unless the smarthost is loopback, where a
    local front MTA may offer no STARTTLS (its own hop onwards is the one that matters);
    never with "none", which is only ever set on purpose.
    """
    return mode == "implicit" or (mode == "starttls" and not is_loopback(host))


def client_context(ca_file: Path | None = None) -> ssl.SSLContext:
    """Verify the chain (against `ca_file`, else the system's CAs) and the host name."""
    try:
        context = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"delivery.ca_file: cannot load {ca_file}: {exc}") from None
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.check_hostname = True
    context.verify_mode = ssl.CERT_REQUIRED
    return context


def credentials_for(settings: DeliverySettings) -> Credentials | None:
    """The AUTH user and password, read now: a missing one stops the relay at start."""
    if not settings.auth_user:
        return None
    if settings.auth_password_file is not None:
        password = _password_file(settings.auth_password_file)
    else:
        name = settings.auth_password_env
        assert name is not None  # the settings require one of the two with auth_user
        password = os.environ.get(name, "")
        if not password:
            raise ConfigError(
                f"delivery.auth_password_env: the environment variable {name} is not set"
            )
    return Credentials(settings.auth_user, password)


def _password_file(path: Path) -> str:
    """The first line of a file only its owner can read (as ssh insists for a private key)."""
    key = "delivery.auth_password_file"
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as exc:
        raise ConfigError(f"{key}: cannot read {path}: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as handle:
        mode = stat.S_IMODE(os.fstat(handle.fileno()).st_mode)
        if mode & 0o077:
            raise ConfigError(
                f"{key}: {path} is open to group or others (mode {mode:04o}); "
                f"the password file must be private: chmod 600 {path}"
            )
        raw = handle.read()
    lines = raw.decode("utf-8", "replace").splitlines()
    if not lines or not lines[0]:
        raise ConfigError(f"{key}: {path} is empty (the password is its first line)")
    return lines[0]


def _tls_failure(exc: BaseException) -> SendResult | None:
    """A TLS error anywhere in the chain of causes, as a reason; None if there is none."""
    cause: BaseException | None = exc
    while cause is not None and not isinstance(cause, ssl.SSLError):
        cause = cause.__cause__ or cause.__context__
    if cause is None:
        return None
    if isinstance(cause, ssl.SSLCertVerificationError):
        detail = f"certificate verify failed: {cause.verify_message}"
    else:
        detail = cause.reason or str(cause)
    return SendResult(Outcome.TEMPORARY, "tls", clean_reason(f"TLS with the smarthost: {detail}"))


class SmtpTransport:
    """Delivery to one smarthost over one reused SMTP connection."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        timeout: float,
        local_hostname: str,
        tls: TlsMode = "starttls",
        tls_context: ssl.SSLContext | None = None,
        credentials: Credentials | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.timeout = timeout
        self.local_hostname = local_hostname
        self.tls = tls
        self.tls_context = tls_context or (client_context() if tls != "none" else None)
        self.credentials = credentials
        self._smtp: aiosmtplib.SMTP | None = None
        self._lock = asyncio.Lock()

    async def send(self, sender: str, recipient: str, data: bytes) -> SendResult:
        for address in (sender, recipient):
            if not _ADDRESS.match(address):
                # No SMTPUTF8 on this hop, and never a CR/LF into the dialogue.
                return SendResult(
                    Outcome.PERMANENT, "addr", clean_reason(f"unusable address {address!r}")
                )
        async with self._lock:
            try:
                try:
                    return await self._transaction(sender, recipient, data)
                except _NotStarted:
                    # A reused connection the server had dropped while idle: nothing
                    # was accepted, so one attempt on a fresh connection is safe.
                    self._drop()
                    return await self._transaction(sender, recipient, data)
            except _Unusable as exc:
                self._drop()
                return exc.result
            except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
                self._drop()
                return _tls_failure(exc) or _trouble(exc)

    async def close(self) -> None:
        async with self._lock:
            smtp, self._smtp = self._smtp, None
            if smtp is None:
                return
            if smtp.is_connected:
                with contextlib.suppress(aiosmtplib.SMTPException, OSError, TimeoutError):
                    await smtp.quit()
            smtp.close()

    async def _transaction(self, sender: str, recipient: str, data: bytes) -> SendResult:
        reused = self._smtp is not None and self._smtp.is_connected
        smtp = self._smtp if reused else await self._connect()
        assert smtp is not None
        try:
            await _command(smtp, 250, b"MAIL", b"FROM:<" + sender.encode("ascii") + b">")
        except aiosmtplib.SMTPResponseException as exc:
            if reused and exc.code == 421:  # the server is closing an idle connection
                raise _NotStarted from exc
            await self._reset(smtp)
            return _reply(exc.code, exc.message)
        except (aiosmtplib.SMTPServerDisconnected, ConnectionError) as exc:
            if reused:
                raise _NotStarted from exc
            raise
        try:
            await _command(smtp, 250, b"RCPT", b"TO:<" + recipient.encode("ascii") + b">")
            response = await self._data(smtp, data)
        except aiosmtplib.SMTPResponseException as exc:
            await self._reset(smtp)
            return _reply(exc.code, exc.message)
        return _reply(response.code, response.message)

    async def _data(self, smtp: aiosmtplib.SMTP, data: bytes) -> aiosmtplib.SMTPResponse:
        """DATA with the copy as `dot_stuffed` makes it. aiosmtplib's own `data()` rewrites
        every line end and looks for dots with regular expressions, 0.4 ms of the event
        loop for a 30 KB copy, more than the rest of its transaction; a copy that is not
        CRLF-only (never one the relay made) still goes through it."""
        wire = dot_stuffed(data)
        if wire is None:
            return await smtp.data(data)
        await _command(smtp, 354, b"DATA")
        protocol = smtp.protocol
        if protocol is None:
            raise aiosmtplib.SMTPServerDisconnected("connection lost before the message")
        protocol.write(wire)  # no await between the write and the read that follows
        response = await protocol.read_response(timeout=self.timeout)
        if response.code != 250:
            raise aiosmtplib.SMTPDataError(response.code, response.message)
        return response

    async def _connect(self) -> aiosmtplib.SMTP:
        """A session ready for MAIL: connected, secured as configured, logged in."""
        self._drop()
        implicit = self.tls == "implicit"
        smtp = aiosmtplib.SMTP(
            hostname=self.host,
            port=self.port,
            timeout=self.timeout,
            local_hostname=self.local_hostname,
            use_tls=implicit,
            start_tls=False,  # never aiosmtplib's "when offered, else plaintext"
            tls_context=self.tls_context if implicit else None,
        )
        try:
            await smtp.connect()
            await self._hello(smtp)
            if self.tls == "starttls":
                await self._starttls(smtp)
            if self.credentials is not None:
                await self._login(smtp, self.credentials)
        except BaseException:
            smtp.close()
            raise
        self._smtp = smtp
        return smtp

    async def _starttls(self, smtp: aiosmtplib.SMTP) -> None:
        if not smtp.supports_extension("starttls"):
            if needs_tls(self.host, self.tls):
                raise _Unusable(
                    SendResult(Outcome.TEMPORARY, "tls", "smarthost offers no STARTTLS")
                )
            return  # a loopback front MTA without STARTTLS: plaintext, as allowed
        try:
            await smtp.starttls(server_hostname=self.host, tls_context=self.tls_context)
        except aiosmtplib.SMTPResponseException as exc:
            reason = clean_reason(f"STARTTLS refused: {exc.code} {exc.message}")
            raise _Unusable(SendResult(Outcome.TEMPORARY, str(exc.code), reason)) from exc
        # RFC 3207: what the server offered before TLS counts for nothing after it.
        await self._hello(smtp)

    async def _login(self, smtp: aiosmtplib.SMTP, credentials: Credentials) -> None:
        encrypted = smtp.get_transport_info("sslcontext") is not None
        if not encrypted and not is_loopback(self.host):
            reason = "SMTP AUTH is never sent in plaintext to a smarthost that is not loopback"
            raise _Unusable(SendResult(Outcome.TEMPORARY, "auth", reason))
        if not smtp.supports_extension("auth"):
            raise _Unusable(SendResult(Outcome.TEMPORARY, "auth", "smarthost offers no AUTH"))
        try:
            await smtp.login(credentials.user, credentials.password)
        except aiosmtplib.SMTPResponseException as exc:
            # Temporary, as Postfix has it: the login of this hop failed, not the recipient.
            reason = clean_reason(f"authentication refused: {exc.code} {exc.message}")
            raise _Unusable(SendResult(Outcome.TEMPORARY, str(exc.code), reason)) from exc

    @staticmethod
    async def _hello(smtp: aiosmtplib.SMTP) -> None:
        """EHLO, so the extensions are known; HELO for a server without ESMTP."""
        try:
            await smtp.ehlo()
        except aiosmtplib.SMTPHeloError:
            await smtp.helo()

    async def _reset(self, smtp: aiosmtplib.SMTP) -> None:
        """RSET after a refused transaction; a connection that cannot reset is dropped."""
        if not smtp.is_connected:
            self._drop()
            return
        try:
            await smtp.rset()
        except (aiosmtplib.SMTPException, OSError, TimeoutError):
            self._drop()

    def _drop(self) -> None:
        if self._smtp is not None:
            self._smtp.close()
            self._smtp = None


async def _command(smtp: aiosmtplib.SMTP, code: int, *words: bytes) -> aiosmtplib.SMTPResponse:
    """One command and its reply, which must carry `code`. MAIL and RCPT go this way rather
    than through `mail()`/`rcpt()`, which parse the address again with the email package
    (0.1 ms a copy); `send` has checked both addresses already."""
    response = await smtp.execute_command(*words)
    if response.code != code:
        raise aiosmtplib.SMTPResponseException(response.code, response.message)
    return response


def dot_stuffed(message: bytes) -> bytes | None:
    """`message` as DATA carries it (RFC 5321 §4.5.2): a line that starts with a dot gets
    another, the last line ends in CRLF, and `.` CRLF ends it; None if the message has a
    CR or LF outside a CRLF pair."""
    if not crlf_only(message):
        return None
    stuffed = message.replace(b"\r\n.", b"\r\n..")
    if stuffed.startswith(b"."):
        stuffed = b"." + stuffed
    if stuffed and not stuffed.endswith(b"\r\n"):
        stuffed += b"\r\n"
    return stuffed + b".\r\n"


_UNSAFE = re.compile(r"[^A-Za-z0-9._@+=-]+")
_MESSAGE_ID = re.compile(
    rb"^Message-ID:[ \t]*([^\r\n]*(?:\r\n[ \t][^\r\n]*)*)", re.IGNORECASE | re.MULTILINE
)


class OutboxTransport:
    """Each copy becomes `<Message-ID>--<recipient>--<hash>.eml` (mode 0600) in a folder.

    The name depends only on the copy's Message-ID and recipient, so a retried
    copy replaces its earlier file instead of duplicating it.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)

    async def send(self, sender: str, recipient: str, data: bytes) -> SendResult:
        name = self.name_for(data, recipient)
        try:
            await asyncio.to_thread(self._write, name, data)
        except OSError as exc:
            return SendResult(Outcome.TEMPORARY, "io", clean_reason(f"{name}: {exc}"))
        return SendResult(Outcome.SENT, "250", f"written to {name}")

    async def close(self) -> None:
        return None

    @staticmethod
    def name_for(data: bytes, recipient: str) -> str:
        head = data.partition(b"\r\n\r\n")[0]
        match = _MESSAGE_ID.search(head)
        message_id = re.sub(rb"\s+", b"", match.group(1)) if match else b""
        ident = message_id.decode("ascii", "replace") or hashlib.sha256(data).hexdigest()
        digest = hashlib.sha256(f"{ident}\0{recipient}".encode()).hexdigest()[:16]
        readable = _UNSAFE.sub("_", f"{ident.strip('<>')}--{recipient}")[:160]
        return f"{readable}--{digest}.eml"

    def _write(self, name: str, data: bytes) -> None:
        """Temporary file, fsync, rename, fsync the folder: all or nothing after a crash."""
        final = self.folder / name
        temporary = self.folder / f".{name}.{secrets.token_hex(8)}.tmp"
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, final)
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise
        folder = os.open(self.folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)


def transports_for(settings: DeliverySettings, local_hostname: str) -> Callable[[], Transport]:
    """Makes the transports the settings name: a smarthost or an outbox folder.

    Called once at start. The password and the CA file are read here, so that a missing
    or unsafe one stops `relay serve` (ConfigError naming the key) instead of deferring
    every copy; `tls = "none"` is said once, as a warning.
    """
    if settings.smarthost is None:
        outbox = settings.outbox
        assert outbox is not None  # the settings require exactly one target
        return lambda: OutboxTransport(outbox)
    host, port = settings.smarthost_address
    if settings.tls == "none":
        event(
            log,
            "warning",
            level=logging.WARNING,
            reason="copies go to the smarthost in plaintext (tls = none)",
            smarthost=settings.smarthost,
        )
    mode: TlsMode = settings.tls
    context = client_context(settings.ca_file) if mode != "none" else None
    credentials = credentials_for(settings)
    timeout = settings.connect_timeout.total_seconds()

    def smtp() -> Transport:
        return SmtpTransport(
            host,
            port,
            timeout=timeout,
            local_hostname=local_hostname,
            tls=mode,
            tls_context=context,
            credentials=credentials,
        )

    return smtp


def make_transport(settings: DeliverySettings, local_hostname: str) -> Transport:
    """One transport the settings name (see `transports_for`)."""
    return transports_for(settings, local_hostname)()

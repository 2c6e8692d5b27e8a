"""Handing finished copies to the next hop: the smarthost over SMTP, or an outbox folder.

A transport moves bytes and classifies the answer; it never decides policy and
never touches the queue. Every outcome is a `SendResult` (2xx sent, 4xx and
network trouble temporary, 5xx permanent); SMTP and network errors never
escape as exceptions, so one bad hop cannot take a worker down.

`SmtpTransport` keeps one connection per instance (one instance per worker) and
reuses it; the message is handed over as bytes so nothing re-flattens what was
signed. `OutboxTransport` writes each copy atomically to a folder, for tests,
dry runs and sites that pick mail up from disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import re
import secrets
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Protocol

import aiosmtplib

from relay.core.config import DeliverySettings

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


class SmtpTransport:
    """Delivery to one smarthost over one reused SMTP connection."""

    def __init__(self, host: str, port: int, *, timeout: float, local_hostname: str) -> None:
        self.host = host
        self.port = port
        self.timeout = timeout
        self.local_hostname = local_hostname
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
            except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
                self._drop()
                return _trouble(exc)

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
            await smtp.mail(sender)
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
            await smtp.rcpt(recipient)
            response = await smtp.data(data)
        except aiosmtplib.SMTPResponseException as exc:
            await self._reset(smtp)
            return _reply(exc.code, exc.message)
        return _reply(response.code, response.message)

    async def _connect(self) -> aiosmtplib.SMTP:
        self._drop()
        smtp = aiosmtplib.SMTP(
            hostname=self.host,
            port=self.port,
            timeout=self.timeout,
            local_hostname=self.local_hostname,
        )
        await smtp.connect()
        self._smtp = smtp
        return smtp

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


def make_transport(settings: DeliverySettings, local_hostname: str) -> Transport:
    """The transport the settings name: a smarthost or an outbox folder."""
    if settings.smarthost is not None:
        host, port = settings.smarthost_address
        return SmtpTransport(
            host,
            port,
            timeout=settings.connect_timeout.total_seconds(),
            local_hostname=local_hostname,
        )
    assert settings.outbox is not None  # the settings require exactly one target
    return OutboxTransport(settings.outbox)

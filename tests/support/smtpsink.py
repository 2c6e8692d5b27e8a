"""A capturing SMTP server for tests: the smarthost the relay delivers to.

In process it runs aiosmtpd in its own thread and event loop on 127.0.0.1 (a
free port unless one is given), records every accepted message as exact bytes,
counts connections, and can answer scripted replies for the next transactions:

    with SmtpSink() as sink:
        sink.reply_next("451 4.3.0 try later", count=2)              # at DATA, anyone
        sink.reply_next("550 5.1.1 no such user", recipient="x@example.net")  # at RCPT
        ...
        (message,) = sink.wait_for(1)

`delay` makes it a slow smarthost (a pause before each DATA reply). Stopping
drops every open connection, as a crashed smarthost would; `start()` again
listens on the same port.

A smarthost with TLS and AUTH, as a mail provider runs one:

    SmtpSink(starttls=server.server_context(), require_tls=True, auth=("relay", "pw"))
    SmtpSink(implicit_tls=server.server_context())           # TLS from the first byte

`require_tls` refuses MAIL before STARTTLS (530 5.7.0), and `auth` refuses MAIL before a
successful AUTH. Each `Received` says whether it came over TLS and as which user;
`mail_commands` counts every MAIL command that reached the sink, refused or not, so a
test can tell that nothing was attempted; `logins` lists each AUTH attempt.

As a separate process (benchmarks, crash tests):

    python -m tests.support.smtpsink --port 0 --out DIR [--delay SECONDS]

prints `listening on HOST:PORT`, writes each message to DIR as `<stamp>.eml`
(exact bytes) next to `<stamp>.json` (the envelope), and stops on SIGTERM/SIGINT.
`read_outdir` and `wait_for_files` read such a folder back.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import signal
import ssl
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

ACCEPTED = "250 2.0.0 OK: queued"


@dataclass(frozen=True)
class Received:
    mail_from: str
    rcpt_tos: tuple[str, ...]
    data: bytes
    tls: bool = False  # over STARTTLS or implicit TLS
    auth_user: str | None = None  # the user the session authenticated as


def _over_tls(server: SMTP) -> bool:
    return server.transport is not None and (
        server.transport.get_extra_info("sslcontext") is not None
    )


def _user(session: Session) -> str | None:
    data = session.auth_data
    return data.decode("utf-8", "replace") if isinstance(data, bytes) else None


@dataclass
class _Script:
    reply: str
    remaining: int
    recipient: str | None
    stage: str


class _Handler:
    def __init__(self, sink: SmtpSink) -> None:
        self.sink = sink

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        reply = self.sink._scripted("mail", [])
        if reply is not None:
            return reply
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 2.1.0 OK"

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        reply = self.sink._scripted("rcpt", [address])
        if reply is not None:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if self.sink.delay:
            await asyncio.sleep(self.sink.delay)  # a slow smarthost, still holding the data
        reply = self.sink._scripted("data", envelope.rcpt_tos)
        if reply is not None:
            return reply
        data = envelope.original_content or b""
        self.sink._record(
            Received(
                str(envelope.mail_from),
                tuple(envelope.rcpt_tos),
                data,
                tls=_over_tls(server),
                auth_user=_user(session),
            )
        )
        return ACCEPTED


class _CountingSMTP(SMTP):
    def __init__(self, sink: SmtpSink, **kwargs: Any) -> None:
        super().__init__(_Handler(sink), **kwargs)
        self._sink = sink

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self.transport is None:  # not the STARTTLS re-entry
            self._sink._opened(transport)
        super().connection_made(transport)

    def connection_lost(self, error: Exception | None) -> None:
        if self.transport is not None:
            self._sink._transports.discard(self.transport)
        super().connection_lost(error)

    async def smtp_MAIL(self, arg: str | None) -> None:
        # Counted before anything is checked: a MAIL the sink refuses was still attempted.
        self._sink._mail_seen()
        if self._sink.require_tls and not _over_tls(self):
            await self.push("530 5.7.0 Must issue a STARTTLS command first")
            return
        assert self.session is not None
        if self._sink.auth is not None and not self.session.authenticated:
            await self.push("530 5.7.0 Authentication required")
            return
        await super().smtp_MAIL(arg)


class SmtpSink:
    """An SMTP server on its own thread that keeps what it receives."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        out: Path | None = None,
        delay: float = 0.0,
        *,
        starttls: ssl.SSLContext | None = None,
        require_tls: bool = False,
        implicit_tls: ssl.SSLContext | None = None,
        auth: tuple[str, str] | None = None,
    ) -> None:
        if require_tls and starttls is None and implicit_tls is None:
            raise ValueError("require_tls needs a context: starttls or implicit_tls")
        if starttls is not None and implicit_tls is not None:
            raise ValueError("starttls and implicit_tls exclude each other")
        self.host = host
        self.port = port
        self.out = Path(out) if out is not None else None
        self.delay = delay  # seconds to wait before answering each DATA
        self.starttls = starttls
        self.require_tls = require_tls
        self.implicit_tls = implicit_tls
        self.auth = auth  # (user, password) that AUTH PLAIN / LOGIN accepts
        self.messages: list[Received] = []
        self.connections = 0  # TCP connections accepted since creation
        self.mail_commands = 0  # MAIL commands received, accepted or refused
        self.logins: list[tuple[str, bool]] = []  # (user, accepted) per AUTH attempt
        self._changed = threading.Condition()
        self._scripts: list[_Script] = []
        self._transports: set[asyncio.BaseTransport] = set()
        self._sequence = itertools.count(1)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.AbstractServer | None = None
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    # Control, from the test's thread

    def start(self) -> SmtpSink:
        if self._thread is not None:
            raise RuntimeError("the sink is already running")
        ready = threading.Event()
        self._error = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, args=(ready,), daemon=True)
        self._thread.start()
        ready.wait()
        if self._error is not None:
            self._thread.join()
            self._thread = None
            raise self._error
        return self

    def stop(self) -> None:
        if self._thread is None or self._loop is None:
            return
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._thread = None

    def __enter__(self) -> SmtpSink:
        return self.start()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def reply_next(
        self,
        reply: str,
        count: int = 1,
        *,
        recipient: str | None = None,
        stage: str | None = None,
    ) -> None:
        """Answer `reply` to the next `count` transactions (for one recipient, or all).

        stage: "mail", "rcpt" or "data"; by default "rcpt" when a recipient is named,
        else "data". A recipient cannot be told apart at "mail".
        """
        stage = stage or ("rcpt" if recipient else "data")
        if stage not in ("mail", "rcpt", "data") or (stage == "mail" and recipient):
            raise ValueError(f"cannot script {stage!r} for recipient {recipient!r}")
        with self._changed:
            self._scripts.append(_Script(reply, count, recipient, stage))

    def wait_for(self, count: int, timeout: float = 10.0) -> list[Received]:
        """Block until at least `count` messages arrived; TimeoutError otherwise."""
        with self._changed:
            if not self._changed.wait_for(lambda: len(self.messages) >= count, timeout):
                raise TimeoutError(f"{len(self.messages)} of {count} messages arrived")
            return list(self.messages)

    # Called on the sink's loop

    def _run(self, ready: threading.Event) -> None:
        loop = self._loop
        assert loop is not None
        asyncio.set_event_loop(loop)
        try:
            self._server = loop.run_until_complete(
                loop.create_server(self._factory, self.host, self.port, ssl=self.implicit_tls)
            )
        except OSError as exc:
            self._error = exc
            loop.close()
            ready.set()
            return
        self.port = self._server.sockets[0].getsockname()[1]
        ready.set()
        loop.run_forever()
        loop.run_until_complete(self._shutdown())
        loop.close()

    def _factory(self) -> SMTP:
        return _CountingSMTP(
            self,
            hostname="smtpsink.test",
            ident="smtpsink",
            loop=self._loop,
            tls_context=self.starttls,
            # aiosmtpd knows only STARTTLS as TLS; over implicit TLS (or a plaintext sink
            # a test wants AUTH on) it must offer AUTH without it.
            auth_require_tls=self.starttls is not None,
            authenticator=self._authenticate,
        )

    def _authenticate(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: object
    ) -> AuthResult:
        if not isinstance(data, LoginPassword) or self.auth is None:
            return AuthResult(success=False, handled=False)
        user = data.login.decode("utf-8", "replace")
        accepted = (user, data.password.decode("utf-8", "replace")) == self.auth
        with self._changed:
            self.logins.append((user, accepted))
        return AuthResult(success=accepted, handled=False, auth_data=data.login)

    async def _shutdown(self) -> None:
        assert self._server is not None
        self._server.close()
        for transport in list(self._transports):
            transport.abort()
        self._transports.clear()
        current = asyncio.current_task()
        tasks = [task for task in asyncio.all_tasks() if task is not current]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._server.wait_closed()

    def _mail_seen(self) -> None:
        with self._changed:
            self.mail_commands += 1

    def _opened(self, transport: asyncio.BaseTransport) -> None:
        self._transports.add(transport)
        with self._changed:
            self.connections += 1

    def _scripted(self, stage: str, recipients: list[str]) -> str | None:
        with self._changed:
            for script in self._scripts:
                if script.stage != stage or script.remaining <= 0:
                    continue
                if script.recipient is None or script.recipient in recipients:
                    script.remaining -= 1
                    return script.reply
        return None

    def _record(self, message: Received) -> None:
        if self.out is not None:
            _write(self.out, message, next(self._sequence))
        with self._changed:
            self.messages.append(message)
            self._changed.notify_all()


# The out-of-process mode


def _write(folder: Path, message: Received, sequence: int) -> None:
    """The envelope first, then the message renamed into place: a `.eml` is always whole."""
    stem = f"{time.time_ns():020d}-{os.getpid()}-{sequence:06d}"
    envelope = {"mail_from": message.mail_from, "rcpt_tos": list(message.rcpt_tos)}
    (folder / f"{stem}.json").write_text(json.dumps(envelope), encoding="utf-8")
    temporary = folder / f".{stem}.tmp"
    temporary.write_bytes(message.data)
    os.replace(temporary, folder / f"{stem}.eml")


def read_outdir(folder: Path) -> list[Received]:
    """The messages a sink process wrote, in arrival order."""
    found = []
    for eml in sorted(Path(folder).glob("*.eml")):
        envelope = json.loads(eml.with_suffix(".json").read_text(encoding="utf-8"))
        found.append(Received(envelope["mail_from"], tuple(envelope["rcpt_tos"]), eml.read_bytes()))
    return found


def wait_for_files(folder: Path, count: int, timeout: float = 10.0) -> list[Received]:
    """Poll a sink process's folder until at least `count` messages are there."""
    deadline = time.monotonic() + timeout
    while True:
        found = read_outdir(folder)
        if len(found) >= count:
            return found
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(found)} of {count} messages arrived in {folder}")
        time.sleep(0.02)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Capturing SMTP server for tests.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--out", type=Path, required=True, help="folder for received messages")
    parser.add_argument("--delay", type=float, default=0.0, help="seconds before each DATA reply")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)

    # Block the stop signals before the server thread starts (it inherits the
    # mask), then wait for one of them here.
    stop_signals = {signal.SIGTERM, signal.SIGINT}
    signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)
    with SmtpSink(args.host, args.port, out=args.out, delay=args.delay) as sink:
        print(f"listening on {sink.host}:{sink.port}", flush=True)
        signal.sigwait(stop_signals)


if __name__ == "__main__":
    main()

"""Serving the console: uvicorn on `[web] host:port`, HTTPS with `tls_cert`/`tls_key`.

`WebServer` binds its socket itself (`listen`), so port 0 becomes a real port the log can
name, and a port already taken or a certificate that cannot be loaded stops the relay at
start instead of ending uvicorn's task with SystemExit. `run(stop)` serves until `stop`
is set, in the caller's event loop: `relay serve` runs it as one of the relay's supervised
tasks, `relay web` (`serve_console`) on its own. uvicorn leaves the signals to the caller.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
from collections.abc import Generator

import uvicorn

from relay.core.config import Settings
from relay.core.errors import RelayError
from relay.core.logs import event
from relay.web.app import create_app
from relay.web.context import Console

log = logging.getLogger("relay.web")


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield  # SIGINT and SIGTERM belong to the relay's loop, which sets the stop event


class WebServer:
    def __init__(self, console: Console) -> None:
        self.console = console
        self.app = create_app(console)
        self._config: uvicorn.Config | None = None
        self._socket: socket.socket | None = None
        self._port: int | None = None

    @property
    def port(self) -> int:
        """The port it listens on (the kernel's choice for `port = 0`)."""
        assert self._port is not None, "not listening"
        return self._port

    @property
    def url(self) -> str:
        web = self.console.settings.web
        host = f"[{web.host}]" if ":" in web.host else web.host
        return f"{'https' if web.https else 'http'}://{host}:{self.port}"

    def listen(self) -> None:
        """Load the certificate and bind the socket; RelayError when either cannot be done."""
        web = self.console.settings.web
        if self._config is None:
            config = uvicorn.Config(
                self.app,
                ssl_certfile=str(web.tls_cert) if web.tls_cert else None,
                ssl_keyfile=str(web.tls_key) if web.tls_key else None,
                lifespan="off",
                log_config=None,
                access_log=False,
                server_header=False,
                timeout_graceful_shutdown=5,
            )
            try:
                config.load()
            except (OSError, ValueError) as exc:
                raise RelayError(f"cannot load the console's certificate: {exc}") from None
            self._config = config
        if self._socket is None:
            # The real port once known: a restarted server keeps the address it announced.
            port = self._port if self._port is not None else web.port
            family = socket.AF_INET6 if ":" in web.host else socket.AF_INET
            try:
                self._socket = socket.create_server((web.host, port), family=family)
            except OSError as exc:
                where = f"{web.host}:{port}"
                raise RelayError(
                    f"cannot listen for the console on {where}: {exc.strerror or exc}"
                ) from None
            self._port = int(self._socket.getsockname()[1])
            event(log, "web listening", url=self.url, https=web.https)

    async def run(self, stop: asyncio.Event) -> None:
        """Serve until `stop` is set (then let requests in progress finish)."""
        self.listen()
        assert self._config is not None and self._socket is not None
        server = _Server(self._config)
        serving = asyncio.create_task(server.serve(sockets=[self._socket]))
        stopping = asyncio.create_task(stop.wait())
        try:
            await asyncio.wait({serving, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            server.should_exit = True
            stopping.cancel()
            self._socket = None  # closed with uvicorn's listener: a new run binds again
            await serving


async def _serve(settings: Settings) -> None:
    console = await asyncio.to_thread(Console.open, settings)
    try:
        server = WebServer(console)
        server.listen()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        print(f"Embargo Relay console on {server.url}; Ctrl-C stops it.", flush=True)
        await server.run(stop)
    finally:
        await asyncio.to_thread(console.close)
    event(log, "web stopped")


def serve_console(settings: Settings) -> None:
    """`relay web`: the console alone, until SIGINT or SIGTERM."""
    asyncio.run(_serve(settings))

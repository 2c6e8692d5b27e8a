"""The running relay: one asyncio loop with the SMTP edge, the dispatcher, this node's
heartbeat, while this node holds its lease, the embargo scheduler, and the console
(relay/web) when `[web] enabled` is true.

`Relay` wires the parts together and can be started and stopped from tests; `serve` runs
it until SIGINT or SIGTERM, and SIGHUP re-reads the edge's TLS certificate and key
(`Relay.reload_tls`). The long-running tasks run under a `Supervisor`: one that ends
unexpectedly is logged and started again (relay/runners/supervision.py). At start, copies
this node left active go back to the queue, so nothing accepted is lost across restarts,
and the node that leads the scheduler runs the lifts and reminders that fell due meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable
from datetime import datetime

from relay.core.config import Settings
from relay.core.database import Database
from relay.core.errors import RelayError
from relay.core.keyrings import open_keyring
from relay.core.logs import event
from relay.inbound.edge import ListHandler
from relay.inbound.server import make_server_factory
from relay.inbound.tls import ServerTLS
from relay.leaks.index import EmbargoedText
from relay.model import utcnow
from relay.outbound.transport import Transport
from relay.runners.dispatcher import Dispatcher
from relay.runners.metrics import Metrics
from relay.runners.node import Node, node_name
from relay.runners.scheduler import EmbargoScheduler
from relay.runners.supervision import Health, Supervisor
from relay.store import at_rest, data_keys, delivery_queue
from relay.store.spool import Spool
from relay.web.context import Console
from relay.web.server import WebServer

log = logging.getLogger("relay.service")


class Relay:
    def __init__(
        self,
        settings: Settings,
        *,
        transport_factory: Callable[[], Transport] | None = None,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.settings = settings
        # The edge's certificate, loaded now: a bad one stops the relay before it starts.
        self.tls = ServerTLS.from_settings(settings.smtp)
        self.db = Database(settings.storage.database_url)
        if not self.db.is_current():
            raise RelayError("the database schema is not current; run 'relay init'")
        self.crypto = open_keyring(settings.gnupg)
        # Embargoed text in the database opens only with the list key.
        data_keys.unwrap(self.db, self.crypto)
        self.spool = Spool(self.db)
        self.name = node_name(settings)
        self.health = Health()
        # One index of embargoed text for the edge (posts) and the dispatcher (copies).
        self.watch = EmbargoedText(self.spool)
        self.dispatcher = Dispatcher(
            settings,
            self.db,
            self.spool,
            self.crypto,
            transport_factory=transport_factory,
            clock=clock,
            watch=self.watch,
            node=self.name,
            health=self.health,
        )
        self.scheduler = EmbargoScheduler(
            self.db,
            self.spool,
            settings,
            clock=clock,
            on_queued=self.dispatcher.wake,
            crypto=self.crypto,
        )
        self.handler = ListHandler(
            settings,
            self.db,
            self.spool,
            self.crypto,
            on_accept=self.dispatcher.wake,
            on_schedule=self.scheduler.reschedule,
            watch=self.watch,
        )
        self.node = Node(
            settings, self.db, self.dispatcher, self.scheduler, self.health, name=self.name
        )
        self._server: asyncio.Server | None = None
        self._stop = asyncio.Event()
        self._supervisor = Supervisor(self._stop, self.health)
        self._warm_up: asyncio.Task[None] | None = None
        enabled = settings.metrics.enabled
        self.metrics = Metrics(settings.metrics, self.db, clock) if enabled else None
        # The console shares the relay's database, keyring and spool (and closes none).
        console = Console(settings, self.db, self.crypto, self.spool)
        self.web = WebServer(console) if settings.web.enabled else None

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self, *, dispatch: bool = True) -> None:
        await asyncio.to_thread(
            at_rest.upgrade, self.db, self.spool, self.settings.storage.spool_dir, self.crypto
        )
        recovered = await asyncio.to_thread(delivery_queue.recover, self.db, (self.name, None, ""))
        if recovered:
            event(log, "recovered", deliveries=recovered)
        # Build the index of embargoed text now, not inside the first accept that needs it.
        self._warm_up = asyncio.create_task(asyncio.to_thread(self._index_embargoed_text))
        # The first beat decides, before the edge listens, whether this node schedules.
        try:
            await self.node.tick()
        except Exception:
            log.exception("first heartbeat failed; the node keeps trying")
        self._supervisor.start("node", lambda: self.node.run(self._stop))
        if self.metrics is not None:  # before the edge listens: it counts every reply
            await asyncio.to_thread(self.metrics.start)
        if self.web is not None:  # a port taken or a bad certificate stops the relay here
            web = self.web
            web.listen()
            self._supervisor.start("web", lambda: web.run(self._stop))
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            make_server_factory(self.handler, self.settings, self.tls),
            host=self.settings.smtp.host,
            port=self.settings.smtp.port,
        )
        smtp = self.settings.smtp
        tls = "off" if self.tls is None else "required" if smtp.tls_required else "offered"
        event(log, "listening", host=smtp.host, port=self.port, node=self.name, tls=tls)
        if dispatch:
            self._supervisor.start("dispatcher", lambda: self.dispatcher.run(self._stop))

    def reload_tls(self) -> bool:
        """Re-read `[smtp] tls_cert` and `tls_key` (SIGHUP): sessions from now on get the
        new certificate; open sessions, the listening socket and the queue are untouched.
        One that cannot be loaded keeps the certificate in use (logged as an error)."""
        if self.tls is None:
            event(log, "tls-reload-skipped", level=logging.WARNING, reason="no smtp.tls_cert")
            return False
        return self.tls.reload()

    def _index_embargoed_text(self) -> None:
        with self.db.transaction() as session:
            self.watch.refresh(session)

    async def stop(self) -> None:
        self._stop.set()
        if self._warm_up is not None:
            await asyncio.gather(self._warm_up, return_exceptions=True)
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        await self._supervisor.wait(timeout=60)
        self.node.step_down()
        await asyncio.to_thread(self.node.stopped)
        # The edge's worker threads end before the database goes away.
        await asyncio.to_thread(self.handler.shutdown)
        if self.metrics is not None:
            await asyncio.to_thread(self.metrics.stop)
        self.db.dispose()
        # gpg-agent would outlive the relay with the list key's secret in its memory.
        await asyncio.to_thread(self.crypto.close)
        event(log, "stopped")

    async def run_until_stopped(self) -> None:
        await self._stop.wait()


async def _serve(settings: Settings) -> None:
    relay = Relay(settings)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, relay._stop.set)
    loop.add_signal_handler(signal.SIGHUP, relay.reload_tls)
    await relay.start()
    print(
        f"Embargo Relay listening on {settings.smtp.host}:{relay.port} "
        f"for {settings.list.address}; Ctrl-C stops it.",
        flush=True,
    )
    await relay.run_until_stopped()
    await relay.stop()


def serve(settings: Settings) -> None:
    """Run the relay until SIGINT or SIGTERM; SIGHUP re-reads the TLS certificate."""
    asyncio.run(_serve(settings))

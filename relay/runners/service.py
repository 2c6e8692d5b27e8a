"""The running relay: one asyncio loop with the SMTP edge, the dispatcher and the
embargo scheduler.

`Relay` wires the parts together and can be started and stopped from tests;
`serve` runs it until SIGINT or SIGTERM. At start, deliveries left active by a
crash go back to the queue, so nothing accepted is lost across restarts, and
lifts or reminders that fell due while the relay was down run at once.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable
from datetime import datetime, timedelta

from relay.core.config import Settings
from relay.core.database import Database
from relay.core.errors import RelayError
from relay.core.gpg import GnuPG
from relay.core.logs import event
from relay.core.spool import Spool
from relay.inbound.edge import ListHandler, make_server_factory
from relay.leaks.index import EmbargoedText
from relay.model import utcnow
from relay.outbound.transport import Transport
from relay.runners.dispatcher import Dispatcher
from relay.runners.scheduler import EmbargoScheduler
from relay.store import delivery_queue

log = logging.getLogger("relay.service")

# Spool files this old with no message row are a crash's leftovers
# (see delivery_queue.sweep_orphans).
ORPHAN_AGE = timedelta(hours=1)


class Relay:
    def __init__(
        self,
        settings: Settings,
        *,
        transport_factory: Callable[[], Transport] | None = None,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.settings = settings
        self.db = Database(settings.storage.database_url)
        if not self.db.is_current():
            raise RelayError("the database schema is not current; run 'relay init'")
        self.crypto = GnuPG(settings.gnupg.home, settings.gnupg.binary)
        self.spool = Spool(settings.storage.spool_dir)
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
        self._server: asyncio.Server | None = None
        self._stop = asyncio.Event()
        self._dispatch_task: asyncio.Task[None] | None = None
        self._warm_up: asyncio.Task[None] | None = None

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self, *, dispatch: bool = True) -> None:
        recovered = await asyncio.to_thread(delivery_queue.recover, self.db)
        if recovered:
            event(log, "recovered", deliveries=recovered)
        swept = await asyncio.to_thread(
            delivery_queue.sweep_orphans, self.db, self.spool, ORPHAN_AGE
        )
        if swept:
            event(log, "swept", orphan_spool_files=swept)
        # Build the index of embargoed text now, not inside the first accept that needs it.
        self._warm_up = asyncio.create_task(asyncio.to_thread(self._index_embargoed_text))
        self.scheduler.start()
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            make_server_factory(self.handler, self.settings),
            host=self.settings.smtp.host,
            port=self.settings.smtp.port,
        )
        event(log, "listening", host=self.settings.smtp.host, port=self.port)
        if dispatch:
            self._dispatch_task = asyncio.create_task(self.dispatcher.run(self._stop))

    def _index_embargoed_text(self) -> None:
        with self.db.transaction() as session:
            self.watch.refresh(session)

    async def stop(self) -> None:
        self._stop.set()
        if self._warm_up is not None:
            await asyncio.gather(self._warm_up, return_exceptions=True)
        self.scheduler.shutdown()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        if self._dispatch_task is not None:
            await self._dispatch_task
        # The edge's worker threads end before the database goes away.
        await asyncio.to_thread(self.handler.shutdown)
        self.db.dispose()
        event(log, "stopped")

    async def run_until_stopped(self) -> None:
        await self._stop.wait()


async def _serve(settings: Settings) -> None:
    relay = Relay(settings)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, relay._stop.set)
    await relay.start()
    print(
        f"Embargo Relay listening on {settings.smtp.host}:{relay.port} "
        f"for {settings.list.address}; Ctrl-C stops it.",
        flush=True,
    )
    await relay.run_until_stopped()
    await relay.stop()


def serve(settings: Settings) -> None:
    """Run the relay until SIGINT or SIGTERM."""
    asyncio.run(_serve(settings))

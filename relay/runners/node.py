"""This node among others on one database: its heartbeat, and the scheduler's lease.

Every `beat` (failover_after / 6) the node writes what it knows of itself (relay/store/
cluster.py) and takes or renews the scheduler's lease for `failover_after - 2 beats`. Only
the holder runs the embargo scheduler; the others keep trying, so when the holder dies (and
stops renewing) one of them holds the lease at most a beat (and the time of one heartbeat)
after it ran out, within `failover_after` of the death, and starts the scheduler, which
first runs what fell due meanwhile. A node that cannot reach the database cannot renew
either: a timer on its event loop stops its scheduler the moment its lease runs out, even
while a heartbeat hangs, before another may take it, so two nodes never both schedule for
long; and a lift is a conditional change, so even they would lift once.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Callable
from datetime import datetime

from relay.core.config import Settings
from relay.core.database import Database
from relay.core.logs import event
from relay.core.references import new_reference
from relay.model import utcnow
from relay.runners.dispatcher import Dispatcher
from relay.runners.scheduler import EmbargoScheduler
from relay.runners.supervision import Health, pause_or_stop
from relay.store import cluster, delivery_queue, public_keys

log = logging.getLogger("relay.node")


def node_name(settings: Settings) -> str:
    """The configured name, else the host name: stable across restarts, so a node that
    comes back takes its own leased copies back at once."""
    return settings.cluster.node_name or socket.gethostname()[:64]


class Node:
    """Keeps this node's row current and runs the scheduler while it holds the lease."""

    def __init__(
        self,
        settings: Settings,
        db: Database,
        dispatcher: Dispatcher,
        scheduler: EmbargoScheduler,
        health: Health,
        *,
        name: str,
        on_lead: Callable[[], None] | None = None,
    ) -> None:
        self.settings = settings
        self.db = db
        self.dispatcher = dispatcher
        self.scheduler = scheduler
        self.health = health
        self.name = name
        # The lease names this very process: two processes given the same node name
        # still never both hold it.
        self.holder = f"{name}#{new_reference()}"[:64]
        self.started_at = utcnow()
        failover = settings.cluster.failover_after
        self.beat = failover / 6
        # Two beats short of failover_after: a beat to notice the lease ran out, and room
        # for the heartbeat that takes it over.
        self.ttl = failover - 2 * self.beat
        self.leading_until: datetime | None = None
        self._lease_timer: asyncio.TimerHandle | None = None
        self._on_lead = on_lead
        # Keys imported through any node reach this keyring (relay/store/public_keys.py).
        self._keys_since: datetime | None = None
        self._keys_due = self.started_at

    @property
    def leads(self) -> bool:
        return self.leading_until is not None

    async def run(self, stop: asyncio.Event) -> None:
        """Beat until `stop`; an iteration that fails (the database) is logged and retried."""
        while not stop.is_set():
            try:
                await self.tick()
            except Exception as error:
                self.health.failed("heartbeat", error)
                log.exception("heartbeat failed")
            else:
                self.health.recovered("heartbeat")
            await pause_or_stop(stop, self.beat.total_seconds())

    async def tick(self) -> None:
        now = utcnow()
        await asyncio.to_thread(cluster.heartbeat, self.db, self._report(), now)
        held = await asyncio.to_thread(
            cluster.take, self.db, cluster.SCHEDULER, self.holder, now, self.ttl
        )
        if held:
            self._lead_until(now + self.ttl)
            if not self.scheduler.running:
                event(log, "leading the scheduler", node=self.name)
                # What fell due while no node led runs first, then the jobs are placed.
                await self.scheduler.take_over()
                if self._on_lead is not None:
                    self._on_lead()
            else:
                await self._release_orphans(now)
                if self.scheduler.missed:  # a lift or reminder the database kept from running
                    await asyncio.to_thread(self.scheduler.tick)
                # Advisories changed through other nodes get their jobs here.
                await asyncio.to_thread(self.scheduler.sync)
        elif self.scheduler.running:
            event(log, "no longer leading the scheduler", node=self.name)
            self.step_down()
        if now >= self._keys_due:
            await self._follow_keys(now)

    async def _follow_keys(self, now: datetime) -> None:
        """Every key at start, then what changed, at most every check_interval."""
        self._keys_due = now + self.settings.embargo.check_interval
        try:
            count, self._keys_since = await asyncio.to_thread(
                public_keys.follow, self.db, self.dispatcher.crypto, self._keys_since
            )
        except Exception as error:  # the heartbeat went through; only the keys wait
            self.health.failed("keys", error)
            log.exception("following the database's keys failed")
            return
        self.health.recovered("keys")
        if count:
            event(log, "keys followed", keys=count, node=self.name)

    async def _release_orphans(self, now: datetime) -> None:
        """Copies leased by a node that died go back to the queue for the living."""
        failover = self.settings.cluster.failover_after
        dead = await asyncio.to_thread(cluster.dead_nodes, self.db, now, failover)
        if dead:
            freed = await asyncio.to_thread(delivery_queue.recover, self.db, dead)
            if freed:
                event(log, "recovered", deliveries=freed, from_nodes=",".join(dead))
                self.dispatcher.wake()

    def _lead_until(self, until: datetime) -> None:
        """Renewed until `until`: the timer that stops the scheduler then moves along."""
        self.leading_until = until
        if self._lease_timer is not None:
            self._lease_timer.cancel()
        delay = max(0.0, (until - utcnow()).total_seconds())
        self._lease_timer = asyncio.get_running_loop().call_later(delay, self._lease_ran_out)

    def _lease_ran_out(self) -> None:
        """Not renewed in time (the database is locked, gone or slow): stop scheduling now,
        before another node may take the lease."""
        if self.leading_until is not None and utcnow() >= self.leading_until:
            event(log, "scheduler lease ran out", node=self.name)
            self.step_down()

    def step_down(self) -> None:
        """Stop scheduling; on the event loop (APScheduler's scheduler belongs to it)."""
        self.leading_until = None
        if self._lease_timer is not None:
            self._lease_timer.cancel()
            self._lease_timer = None
        self.scheduler.shutdown()

    def _report(self) -> cluster.Report:
        return cluster.Report(
            name=self.name,
            host=socket.gethostname(),
            pid=os.getpid(),
            started_at=self.started_at,
            last_claim_at=self.dispatcher.last_claim_at,
            last_delivery_at=self.dispatcher.last_delivery_at,
            errors_last_hour=self.health.recent_errors(),
            restarts=self.health.restarts,
            failing=dict(self.health.failing),
        )

    def stopped(self) -> None:
        """After `step_down`: give the lease back (another node leads at once) and say so."""
        try:
            cluster.give_up(self.db, cluster.SCHEDULER, self.holder)
            cluster.stopped(self.db, self.name, utcnow())
        except Exception:
            log.exception("could not record the stop of node %s", self.name)

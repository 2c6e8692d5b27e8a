"""Supervision: no long-running task of the relay stops silently.

Two levels, as in Erlang's supervisors and Postfix's master:

- `repeat` runs one iteration of a loop after another. An exception in an iteration is
  logged with its traceback and counted (`Health`), and the loop waits before the next
  one: a pause that doubles with each failure in a row, bounded, with jitter so nodes that
  lost the same database do not come back in step. A database that is locked or gone
  makes every iteration fail the same way; the loop keeps trying and resumes when it is back.
- `Supervisor` owns the tasks of one node. A task that ends while the node is not stopping
  (returned or raised past its own loop) is logged and started again after the same kind
  of pause; stopping the node cancels nothing until the tasks have seen the stop event.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from relay.core.logs import event

log = logging.getLogger("relay.supervision")

ERROR_WINDOW = 3600.0  # seconds of errors `Health.recent_errors` counts


@dataclass(frozen=True)
class Backoff:
    """Pauses after failures in a row: first, doubling, at most `longest`, +-`jitter`."""

    first: float = 0.5
    longest: float = 30.0
    jitter: float = 0.2  # a share of the pause

    def pause(self, failures: int) -> float:
        base = min(self.longest, self.first * 2 ** max(0, failures - 1))
        return base * random.uniform(1 - self.jitter, 1 + self.jitter)


@dataclass
class Health:
    """What a node's tasks report about themselves, for `relay status` and the logs."""

    errors: deque[tuple[float, str, str]] = field(default_factory=lambda: deque(maxlen=1000))
    restarts: int = 0
    failing: dict[str, str] = field(default_factory=dict)  # task -> last error, while failing

    def failed(self, task: str, error: BaseException) -> None:
        text = f"{type(error).__name__}: {error}"[:500]
        self.errors.append((time.time(), task, text))
        self.failing[task] = text

    def recovered(self, task: str) -> None:
        self.failing.pop(task, None)

    def recent_errors(self, window: float = ERROR_WINDOW) -> int:
        since = time.time() - window
        return sum(1 for moment, _, _ in self.errors if moment >= since)


async def pause_or_stop(stop: asyncio.Event, seconds: float) -> None:
    """Sleep, but wake at once when the node stops."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=seconds)


async def repeat(
    name: str,
    iteration: Callable[[], Awaitable[object]],
    stop: asyncio.Event,
    *,
    health: Health,
    backoff: Backoff = Backoff(),
) -> None:
    """Run `iteration` until `stop` is set; an exception costs one iteration and a pause."""
    failures = 0
    while not stop.is_set():
        try:
            await iteration()
        except asyncio.CancelledError:
            raise
        except Exception as error:
            failures += 1
            health.failed(name, error)
            pause = backoff.pause(failures)
            log.exception("%s failed (%d in a row); next try in %.1f s", name, failures, pause)
            await pause_or_stop(stop, pause)
        else:
            if failures:
                event(log, "recovered", task=name, after_failures=failures)
                health.recovered(name)
            failures = 0


class Supervisor:
    """Starts a node's long-running tasks and restarts one that ends unexpectedly."""

    def __init__(self, stop: asyncio.Event, health: Health, backoff: Backoff = Backoff()) -> None:
        self._stop = stop
        self.health = health
        self._backoff = backoff
        self._tasks: dict[str, asyncio.Task[None]] = {}

    def start(self, name: str, run: Callable[[], Awaitable[None]]) -> None:
        """Run `run()` as the task `name`, again and again until the node stops."""
        self._tasks[name] = asyncio.create_task(self._keep(name, run), name=name)

    async def _keep(self, name: str, run: Callable[[], Awaitable[None]]) -> None:
        ends = 0
        while not self._stop.is_set():
            try:
                await run()
            except asyncio.CancelledError:
                raise
            except Exception as error:
                self.health.failed(name, error)
                log.exception("task %s ended with an error", name)
            else:
                if self._stop.is_set():
                    return
                log.error("task %s ended while the relay runs", name)
            ends += 1
            self.health.restarts += 1
            pause = self._backoff.pause(ends)
            event(log, "restarting", task=name, times=ends, after_s=round(pause, 2))
            await pause_or_stop(self._stop, pause)

    def running(self) -> list[str]:
        return [name for name, task in self._tasks.items() if not task.done()]

    async def wait(self, timeout: float | None = None) -> None:
        """Wait for every task to end after the stop event; cancel what overstays."""
        tasks = list(self._tasks.values())
        if not tasks:
            return
        done, pending = await asyncio.wait(tasks, timeout=timeout)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        for task in done:
            if not task.cancelled() and task.exception() is not None:
                log.error("task %s ended with %r at stop", task.get_name(), task.exception())

"""What clients may cost the SMTP edge: connections, and threads for their posts.

`ConnectionLimits` counts open sessions, in all and per client address; the edge
answers a connection beyond either cap with `421 4.7.0` and closes it before reading
anything. `WorkPool` is a few worker threads with a bounded wait: work beyond it is
refused at once (`Busy`), so a flood costs a quick `451 4.3.2` instead of memory and
a queue that everyone, the signed post included, would wait behind. The edge keeps
two: one for the unauthenticated part of every post (the signature check), one for
posts whose signature is good. Both are used from the event loop only.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
R = TypeVar("R")


class ConnectionLimits:
    """Open SMTP sessions, in all and per client address (event loop only)."""

    def __init__(self, total: int, per_address: int) -> None:
        self.total = total
        self.per_address = per_address
        self.open = 0
        self._by_address: Counter[str] = Counter()

    def admit(self, address: str) -> str | None:
        """Count a new session, or say why not (the text of a 421 reply)."""
        if self.open >= self.total:
            return "Too many connections; try again later"
        if self._by_address[address] >= self.per_address:
            return "Too many connections from your address; try again later"
        self.open += 1
        self._by_address[address] += 1
        return None

    def release(self, address: str) -> None:
        self.open -= 1
        self._by_address[address] -= 1
        if self._by_address[address] <= 0:
            del self._by_address[address]


class Busy(Exception):
    """Every worker is busy and the wait is full: answer 451 4.3.2 now."""


class WorkPool:
    """`workers` threads and room for `waiting` more jobs; beyond that, `Busy`."""

    def __init__(self, workers: int, waiting: int, name: str) -> None:
        self._executor = ThreadPoolExecutor(workers, thread_name_prefix=name)
        self.capacity = workers + waiting
        self.taken = 0  # jobs running or waiting; changed on the event loop only

    async def run(self, fn: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
        if self.taken >= self.capacity:
            raise Busy
        loop = asyncio.get_running_loop()
        self.taken += 1
        try:
            future = self._executor.submit(fn, *args, **kwargs)
        except BaseException:
            self.taken -= 1
            raise

        def done(_: Future[R]) -> None:  # in the worker, or here if cancelled unstarted
            with contextlib.suppress(RuntimeError):  # a closed loop: nobody counts any more
                loop.call_soon_threadsafe(self._release)

        future.add_done_callback(done)
        return await asyncio.wrap_future(future)

    def _release(self) -> None:
        self.taken -= 1

    def shutdown(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

"""The crypto workers: where the dispatcher's copies are signed and encrypted, off the event loop.

GnuPG works in processes of its own (gpg, gpg-agent), so threads that wait on it run in
parallel. Sequoia works in this process and holds Python's GIL while it signs and encrypts
(pysequoia does not release it): threads would take turns with each other and with the
event loop that speaks SMTP. For such a backend (`Crypto.worker_opener()` names how to open
its keyring again) the workers are processes, started on first use, each opening the same
keyring once; they ignore SIGINT and SIGTERM, so a stop lets them seal what is in flight,
and end with the relay.

A worker process that dies (killed, out of memory, a crash in the library) breaks its pool:
every copy it held fails with `WorkerLost`, which the dispatcher records as an error on the
copy, retried on the schedule (a copy that kills its worker each time fails after
`max_errors`); the next copy starts a fresh pool.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import TypeVar

from relay.core.crypto import Crypto

T = TypeVar("T")

# What a worker does: `task(crypto, *args)` with the worker's keyring. A module-level
# function, so a worker process can be told it by name.
Task = Callable[..., T]


class WorkerLost(RuntimeError):
    """A crypto worker process died while it held the copy; nothing was sent."""


class CryptoWorkers:
    def __init__(self, crypto: Crypto, count: int) -> None:
        self._crypto = crypto
        self._count = count
        self._opener = crypto.worker_opener()
        self._lock = threading.Lock()
        self._pool: Executor | None = None

    @property
    def in_processes(self) -> bool:
        return self._opener is not None

    async def run(self, task: Task[T], *args: object) -> T:
        """`task(crypto, *args)` in a worker; its exceptions are raised here."""
        pool = self._current()
        loop = asyncio.get_running_loop()
        if self._opener is None:
            return await loop.run_in_executor(pool, task, self._crypto, *args)
        try:
            return await loop.run_in_executor(pool, _in_worker, task, args)
        except BrokenProcessPool as exc:
            self._discard(pool)
            raise WorkerLost(f"a crypto worker process died: {exc}") from None

    def start(self) -> list[Future[int]]:
        """Start the workers now, so the first copy does not wait for them to start; each
        future is done once a worker has started and opened its keyring."""
        pool = self._current()
        if self._opener is None:
            return []
        return [pool.submit(_in_worker, _ready, ()) for _ in range(self._count)]

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Block until every worker process has started and read its keyring: `start`'s
        futures may all be done by the first one up while another is still starting."""
        if self._opener is None:
            return
        pool = self._current()
        seen: set[int] = set()
        deadline = time.monotonic() + timeout
        while len(seen) < self._count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self._count - len(seen)} crypto workers did not start")
            lot = [pool.submit(_in_worker, _ready, ()) for _ in range(self._count)]
            seen |= {done.result(timeout) for done in lot}

    def close(self) -> None:
        """Stop the workers once the work they hold is done."""
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)

    def _current(self) -> Executor:
        with self._lock:
            if self._pool is None:
                self._pool = self._new_pool()
            return self._pool

    def _new_pool(self) -> Executor:
        if self._opener is None:
            return ThreadPoolExecutor(self._count, thread_name_prefix="crypto")
        return ProcessPoolExecutor(
            self._count,
            # Not fork: this process runs threads (the event loop's helpers, the database's)
            # whose locks a forked child could inherit held.
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_open_keyring,
            # This process's id, not the worker's parent as the worker later finds it: a
            # worker still starting when the relay is killed is by then another's child.
            initargs=(self._opener, os.getpid()),
        )

    def _discard(self, broken: Executor) -> None:
        with self._lock:
            if self._pool is broken:
                self._pool = None
        broken.shutdown(wait=False, cancel_futures=True)


# In a worker process

_keyring: Crypto | None = None
_WATCH = 0.5  # seconds between looks at whether the relay still runs


def _open_keyring(opener: Callable[[], Crypto], relay: int) -> None:
    global _keyring
    # The relay stops its workers itself, after the copies in flight are sealed.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if os.getppid() != relay:  # killed while this worker started: never open the key
        os._exit(1)
    threading.Thread(target=_end_with, args=(relay,), daemon=True).start()
    _keyring = opener()


def _end_with(parent: int) -> None:
    """End this worker when the relay has ended, even by SIGKILL: it holds the list key, and
    its own end of the task pipe would keep it waiting for work forever."""
    while os.getppid() == parent:
        time.sleep(_WATCH)
    os._exit(1)


def _in_worker(task: Task[T], args: tuple[object, ...]) -> T:
    assert _keyring is not None, "the worker's keyring was not opened"
    return task(_keyring, *args)


def _ready(crypto: Crypto) -> int:
    """Read the keyring and describe its keys, as every copy asks (what it costs once); the
    worker's process id."""
    crypto.list_keys()
    return os.getpid()

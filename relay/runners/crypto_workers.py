"""The crypto workers: where the dispatcher's copies are signed and encrypted, off the event loop.

The workers are processes of the relay's own, each opening the keyring once
(`Crypto.worker_opener()` says how) and sealing one copy at a time. Not threads: Sequoia
holds Python's GIL while it signs and encrypts, so threads would take turns with each other
and with the event loop that speaks SMTP; and python-gnupg, though gpg does the work in
processes of its own, reads gpg's answers in Python threads that took the GIL from the
event loop just as much (a 20 KB advisory to 200 members took the relay 1.763 s with two
threads on a floor of 1.220 s, and 1.450 s with two processes on a floor of 1.200 s: the
medians of bench/fanout.py in the README).

The event loop talks to each worker process over two pipes of its own, read and written
without blocking from the loop itself: no feeder or result thread between, no lock, one
`write` and one `read` a copy (Python's process pool spent about 0.2 ms of this process a
copy in its two threads). A worker holds at most `DEPTH` copies, one at work and the next
waiting, and the rest wait here for whichever worker answers first, so a large copy holds
up only itself. Each answer is a length-prefixed pickle, given in the order asked.

Workers ignore SIGINT and SIGTERM: a stop lets them seal what is in flight, then the relay
closes their pipes and they end. They end with the relay even when it is killed: its end
of the request pipe closes and the worker reads the end of it (or, if it is sealing, fails
to write its answer); and a worker that starts after the relay has died never opens the
keyring.

A worker process that dies (killed, out of memory, a crash in the library) fails the copy it
was sealing with `WorkerLost`, which the dispatcher records as an error on the copy, retried
on the schedule (a copy that kills its worker each time fails after `max_errors`); the copy
queued behind it goes to another worker, and a fresh worker takes the dead one's place.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import pickle
import signal
import struct
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, BinaryIO, TypeVar, cast

from relay.core.crypto import Crypto

T = TypeVar("T")

# What a worker does: `task(crypto, *args)` with the worker's keyring. A module-level
# function, so a worker process can be told it by name.
Task = Callable[..., T]

DEPTH = 2  # copies a worker holds: one at work, the next already in its pipe
_HEAD = struct.Struct(">Q")  # the length of the pickle that follows
_READ = 1 << 20
# The worker's first lines, before anything of the relay is imported: signals first, then
# the relay's own import path from the request pipe (as multiprocessing's spawn does).
_BOOT = (
    "import os, pickle, signal, sys\n"
    "signal.signal(signal.SIGINT, signal.SIG_IGN)\n"
    "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    "requests = os.fdopen(int(sys.argv[1]), 'rb')\n"
    "sys.path[:0] = pickle.load(requests)\n"
    "from relay.runners.crypto_workers import serve\n"
    "serve(requests, os.fdopen(int(sys.argv[2]), 'wb'))\n"
)


class WorkerLost(RuntimeError):
    """A crypto worker process died while it held the copy; nothing was sent."""


class CryptoWorkers:
    def __init__(self, crypto: Crypto, count: int) -> None:
        self._count = count
        self._opener = crypto.worker_opener()
        self._processes: list[_Worker] = []
        self._waiting: collections.deque[_Request] = collections.deque()
        self._loop: asyncio.AbstractEventLoop | None = None  # the loop watching the pipes

    async def run(self, task: Task[T], *args: object) -> T:
        """`task(crypto, *args)` in a worker; its exceptions are raised here."""
        loop = asyncio.get_running_loop()
        request = _Request(_frame((task, args)), loop.create_future())
        self._waiting.append(request)
        self._feed(loop)
        return cast(T, await request.answer)

    def start(self) -> None:
        """Start the worker processes now, so the first copy does not wait for them."""
        while len(self._processes) < self._count:
            self._processes.append(_Worker.spawn(self._opener))

    def wait_ready(self, timeout: float = 60.0) -> list[int]:
        """Start the workers and wait until each has opened its keyring; their process ids.
        Not from a running event loop: it runs one of its own."""
        self.start()

        async def opened() -> None:
            loop = asyncio.get_running_loop()
            self._attach(loop)
            await asyncio.wait_for(
                asyncio.gather(*(w.readiness(loop) for w in self._processes)), timeout
            )

        asyncio.run(opened())
        return [w.process.pid for w in self._processes]

    async def aclose(self) -> None:
        """Stop the workers once the copy each is sealing is done (from the loop using them)."""
        workers = self._detach()
        await asyncio.to_thread(self._end, workers)

    def close(self) -> None:
        """`aclose` for a caller with no event loop using the workers (or one that has ended)."""
        self._end(self._detach())

    # Feeding the workers

    def _feed(self, loop: asyncio.AbstractEventLoop) -> None:
        """Give waiting copies to the workers holding fewest, starting workers as needed."""
        self.start()
        self._attach(loop)
        while self._waiting:
            worker = min(self._processes, key=lambda w: len(w.held))
            if len(worker.held) >= DEPTH:
                return
            request = self._waiting.popleft()
            if request.answer.done():  # its caller gave up (cancelled) before it went out
                continue
            if worker.send(request, loop):
                continue
            # Gone before it could read this copy: it waits for another worker.
            self._waiting.appendleft(request)
            self._lost(worker)
            self.start()
            self._attach(loop)

    def _attach(self, loop: asyncio.AbstractEventLoop) -> None:
        """Watch the workers' pipes from `loop` (a new loop, say a later `asyncio.run`,
        takes them over from one that has ended)."""
        self._loop = loop
        for worker in self._processes:
            if worker.loop is not loop:
                worker.attach(loop, self._readable)

    def _readable(self, worker: _Worker) -> None:
        """The loop's call when `worker`'s answer pipe can be read."""
        if not worker.receive():
            self._lost(worker)
        if self._waiting and self._loop is not None:
            self._feed(self._loop)

    def _lost(self, worker: _Worker) -> None:
        """`worker` died: the copy it was sealing fails (every copy waiting, if it died
        before it opened the keyring); the copy queued behind it waits for another."""
        self._processes.remove(worker)
        held = worker.end(kill=True)
        lost = WorkerLost(f"a crypto worker process died ({worker.exit_status()})")
        if worker.opened:
            failed, again = held[:1], held[1:]
        else:
            failed, again = held + list(self._waiting), []
            self._waiting.clear()
            worker.fail_readiness(lost)
        for request in failed:
            _settle(request.answer, False, lost)
        self._waiting.extendleft(reversed(again))

    def _detach(self) -> list[_Worker]:
        workers, self._processes = self._processes, []
        for worker in workers:
            worker.detach()
        self._loop = None
        for request in self._waiting:
            request.answer.cancel()
        self._waiting.clear()
        return workers

    @staticmethod
    def _end(workers: list[_Worker]) -> None:
        for worker in workers:
            worker.end(kill=False)


@dataclass
class _Request:
    frame: bytes
    answer: asyncio.Future[Any]


@dataclass
class _Worker:
    """One worker process, our ends of its two pipes (non-blocking), and the requests it
    holds, answered in the order sent."""

    process: subprocess.Popen[bytes]
    requests: int
    answers: int
    opened: bool = False  # it has opened the keyring (its first answer)
    held: list[_Request] = field(default_factory=list)
    unsent: bytearray = field(default_factory=bytearray)
    received: bytearray = field(default_factory=bytearray)
    loop: asyncio.AbstractEventLoop | None = None
    _ready: asyncio.Future[None] | None = None

    @classmethod
    def spawn(cls, opener: Callable[[], Crypto]) -> _Worker:
        to_worker, requests = os.pipe()
        answers, from_worker = os.pipe()
        try:
            process = subprocess.Popen(
                [sys.executable, "-c", _BOOT, str(to_worker), str(from_worker)],
                stdin=subprocess.DEVNULL,
                pass_fds=(to_worker, from_worker),
            )
            # Small, so the pipe takes it at once: the import path, then how to open the
            # keyring (the passphrase travels here, never in arguments or environment)
            # and whose worker it is.
            first = pickle.dumps(sys.path) + _frame((opener, os.getpid()))
            if os.write(requests, first) != len(first):
                raise OSError("a crypto worker did not take its start-up data")
        except BaseException:
            os.close(requests)
            os.close(answers)
            raise
        finally:
            os.close(to_worker)
            os.close(from_worker)
        os.set_blocking(requests, False)
        os.set_blocking(answers, False)
        return cls(process, requests, answers)

    def readiness(self, loop: asyncio.AbstractEventLoop) -> asyncio.Future[None]:
        """Done once the worker has opened its keyring."""
        if self._ready is None or self._ready.get_loop() is not loop:
            self._ready = loop.create_future()
            if self.opened:
                self._ready.set_result(None)
        return self._ready

    def fail_readiness(self, error: Exception) -> None:
        if self._ready is not None:
            _settle(self._ready, False, error)

    def attach(self, loop: asyncio.AbstractEventLoop, readable: Callable[[_Worker], None]) -> None:
        self.detach()
        self.loop = loop
        loop.add_reader(self.answers, readable, self)
        if self.unsent:
            loop.add_writer(self.requests, self._flush)

    def detach(self) -> None:
        loop, self.loop = self.loop, None
        if loop is not None and not loop.is_closed():
            loop.remove_reader(self.answers)
            loop.remove_writer(self.requests)

    def send(self, request: _Request, loop: asyncio.AbstractEventLoop) -> bool:
        """Hand `request` to the worker: written now, or what the pipe will not take once it
        can. False if the worker is gone (nothing of it was sent)."""
        if self.unsent:
            self.unsent += request.frame
            self.held.append(request)
            return True
        try:
            written = os.write(self.requests, request.frame)
        except BlockingIOError:
            written = 0
        except OSError:  # EPIPE: it has died
            return False
        self.held.append(request)
        if written < len(request.frame):
            self.unsent += request.frame[written:]
            loop.add_writer(self.requests, self._flush)
        return True

    def _flush(self) -> None:
        try:
            written = os.write(self.requests, self.unsent)
        except BlockingIOError:
            return
        except OSError:  # it died: the end of its answer pipe tells the pool
            written = len(self.unsent)
        del self.unsent[:written]
        if not self.unsent and self.loop is not None:
            self.loop.remove_writer(self.requests)

    def receive(self) -> bool:
        """Read what the worker has written and settle the requests it answers; False if
        it has gone (its end of the pipe closed)."""
        try:
            data = os.read(self.answers, _READ)
        except BlockingIOError:
            return True
        except OSError:
            return False
        if not data:
            return False
        self.received += data
        while len(self.received) >= _HEAD.size:
            (length,) = _HEAD.unpack_from(self.received)
            end = _HEAD.size + length
            if len(self.received) < end:
                break
            with memoryview(self.received) as view:
                answer = pickle.loads(view[_HEAD.size : end])
            del self.received[:end]
            if not self.opened:
                self.opened = True
                if self._ready is not None:
                    _settle(self._ready, True, None)
                continue
            ok, value = answer
            _settle(self.held.pop(0).answer, ok, value)
        return True

    def end(self, *, kill: bool) -> list[_Request]:
        """Close our ends of its pipes and reap it: on a stop it ends after the copy it is
        sealing; with `kill` it is dead or dying already. The requests it held."""
        self.detach()
        for fd in (self.requests, self.answers):
            with contextlib.suppress(OSError):
                os.close(fd)
        self.requests = self.answers = -1
        try:
            self.process.wait(1 if kill else 10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        held, self.held = self.held, []
        return held

    def exit_status(self) -> str:
        code = self.process.returncode
        if code is not None and code < 0:
            return f"killed by {signal.Signals(-code).name}"
        return f"exit status {code}"


def _settle(future: asyncio.Future[Any], ok: bool, value: Any) -> None:
    """Answer `future` unless its caller has given up on it (cancelled, or its loop ended)."""
    if future.done() or future.get_loop().is_closed():
        return
    if ok:
        future.set_result(value)
    else:
        future.set_exception(value)


def _frame(value: object) -> bytes:
    data = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    return _HEAD.pack(len(data)) + data


# In a worker process


def serve(requests: BinaryIO, answers: BinaryIO) -> None:
    """A worker's life: open the keyring, then answer each request in order until the relay
    closes the pipe (or has died)."""
    opener, relay = _read(requests)
    if os.getppid() != relay:  # the relay died while this worker started: never open the key
        os._exit(1)
    keyring = opener()
    keyring.list_keys()  # what every copy asks: read now, not by the first copy
    try:
        _write(answers, os.getpid())
        while (request := _read(requests)) is not None:
            task, args = request
            try:
                answer: tuple[bool, object] = (True, task(keyring, *args))
            except Exception as exc:
                answer = (False, exc)
            _write(answers, answer)
    except BrokenPipeError:  # the relay is gone
        pass
    os._exit(0)


def _read(pipe: BinaryIO) -> Any:
    head = pipe.read(_HEAD.size)
    if len(head) < _HEAD.size:
        return None
    (length,) = _HEAD.unpack(head)
    data = pipe.read(length)
    if len(data) < length:
        return None
    return pickle.loads(data)


def _write(pipe: BinaryIO, answer: object) -> None:
    try:
        frame = _frame(answer)
    except Exception as exc:  # an exception pickle cannot carry: its words instead
        error = cast(tuple[bool, BaseException], answer)[1]
        frame = _frame((False, RuntimeError(f"{type(error).__name__}: {error} ({exc})")))
    pipe.write(frame)
    pipe.flush()

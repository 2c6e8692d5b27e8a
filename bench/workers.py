"""Crypto worker pool benchmark: what handing a copy to a worker process and taking its
answer back costs the relay's process, against the standard library's process pool.

Run: `.venv/bin/python -m bench.workers` (part of `make bench`).

Both pools run two worker processes (started and warm before the clock starts) and the same
task, which returns its 20 KB argument with 10 KB more (a copy's size, sealed), so what is
measured is the pool alone: the CPU time of this process (all its threads) per task, and
the wall time per task with every task submitted at once. The peer is
`concurrent.futures.ProcessPoolExecutor` driven from an event loop with
`run_in_executor`, which is what the relay's workers were before.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import statistics
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ProcessPoolExecutor

from relay.runners.crypto_workers import CryptoWorkers

COPY = b"x" * 20480
WORKERS = 2


def grow(_: object, data: bytes) -> bytes:
    """The task: a copy's bytes in, a sealed copy's size out."""
    return data + b"y" * 10240


def _grow(data: bytes) -> bytes:
    return grow(None, data)


class _Keyring:
    """A keyring with no keys: the task ignores it."""

    def list_keys(self) -> list[object]:
        return []


class _Opener:
    def __call__(self) -> _Keyring:
        return _Keyring()


class _NoKeyring:
    def worker_opener(self) -> _Opener:
        return _Opener()


def measure(submit: Callable[[], Awaitable[bytes]], tasks: int) -> tuple[float, float]:
    """(ms of this process's CPU per task, ms of wall time per task) for `tasks` at once."""

    async def all_at_once() -> None:
        answers = await asyncio.gather(*(submit() for _ in range(tasks)))
        assert all(len(a) == len(COPY) + 10240 for a in answers)

    cpu, wall = time.process_time(), time.perf_counter()
    asyncio.run(all_at_once())
    return (
        (time.process_time() - cpu) / tasks * 1e3,
        (time.perf_counter() - wall) / tasks * 1e3,
    )


def relay_pool(tasks: int, repeat: int) -> list[tuple[float, float]]:
    # By this module's name, not `__main__`, which a worker process would not find.
    from bench import workers as named

    pool = CryptoWorkers(named._NoKeyring(), WORKERS)  # type: ignore[arg-type]
    try:
        pool.wait_ready()
        return [measure(lambda: pool.run(named.grow, COPY), tasks) for _ in range(repeat)]
    finally:
        pool.close()


def stdlib_pool(tasks: int, repeat: int) -> list[tuple[float, float]]:
    from bench import workers as named

    pool = ProcessPoolExecutor(WORKERS, mp_context=multiprocessing.get_context("spawn"))
    try:
        list(pool.map(named._grow, [COPY] * WORKERS * 4))  # both started and warm

        async def submit() -> bytes:
            return await asyncio.get_running_loop().run_in_executor(pool, named._grow, COPY)

        return [measure(submit, tasks) for _ in range(repeat)]
    finally:
        pool.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    print(
        f"{args.tasks} tasks of 20 KB in, 30 KB out, two worker processes; "
        f"median of {2 * args.repeat} runs, the two pools taking turns"
    )
    print("| pool | CPU of the relay's process, ms/task | wall, ms/task |")
    print("| --- | --- | --- |")
    rows: dict[str, list[tuple[float, float]]] = {}
    # In turns, so both see the same machine.
    for _ in range(2):
        for name, runs in (
            ("relay (relay/runners/crypto_workers.py)", relay_pool),
            ("ProcessPoolExecutor", stdlib_pool),
        ):
            rows.setdefault(name, []).extend(runs(args.tasks, args.repeat))
    for name, results in rows.items():
        cpu = statistics.median(r[0] for r in results)
        wall = statistics.median(r[1] for r in results)
        print(f"| {name} | {cpu:.3f} | {wall:.3f} |")


if __name__ == "__main__":
    main()

"""Supervised tasks: an exception costs one iteration, a task that ends is started again."""

from __future__ import annotations

import asyncio
import logging

import pytest

from relay.runners.supervision import Backoff, Health, Supervisor, repeat

FAST = Backoff(first=0.01, longest=0.05)


def test_backoff_doubles_up_to_its_bound_with_jitter() -> None:
    backoff = Backoff(first=1.0, longest=8.0, jitter=0.2)
    for failures, base in ((1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (9, 8.0)):
        pauses = [backoff.pause(failures) for _ in range(200)]
        assert all(0.8 * base <= p <= 1.2 * base for p in pauses)
        assert len(set(pauses)) > 1  # jitter: nodes do not retry in step


def test_an_iteration_that_raises_is_logged_and_the_loop_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    calls: list[int] = []
    health = Health()

    async def main() -> None:
        stop = asyncio.Event()

        async def iteration() -> None:
            calls.append(len(calls))
            if len(calls) <= 3:
                raise OSError("database is locked")
            if len(calls) == 6:
                stop.set()

        await asyncio.wait_for(repeat("claim", iteration, stop, health=health, backoff=FAST), 5)

    with caplog.at_level(logging.ERROR, logger="relay.supervision"):
        asyncio.run(main())
    assert len(calls) == 6
    assert health.recent_errors() == 3
    assert health.failing == {}  # recovered
    failures = [r for r in caplog.records if "claim failed" in r.getMessage()]
    assert len(failures) == 3
    assert all(r.exc_info and "database is locked" in str(r.exc_info[1]) for r in failures)


def test_a_task_that_ends_or_raises_is_restarted_until_the_node_stops() -> None:
    runs: list[str] = []
    health = Health()

    async def main() -> None:
        stop = asyncio.Event()
        supervisor = Supervisor(stop, health, FAST)

        async def dispatcher() -> None:
            runs.append("run")
            if len(runs) == 1:
                raise RuntimeError("claim raised")
            if len(runs) == 2:
                return  # ended for no reason
            await stop.wait()

        supervisor.start("dispatcher", dispatcher)
        while len(runs) < 3:
            await asyncio.sleep(0.01)
        assert supervisor.running() == ["dispatcher"]
        stop.set()
        await supervisor.wait(timeout=5)
        assert supervisor.running() == []

    asyncio.run(main())
    assert runs == ["run", "run", "run"]
    assert health.restarts == 2
    assert health.recent_errors() == 1

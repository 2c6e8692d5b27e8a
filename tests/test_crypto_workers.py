"""The dispatcher's crypto workers (relay/runners/crypto_workers.py): processes of the
relay's own for either backend. Real pysequoia, real gpg, real worker processes killed for
real; the dispatcher's recovery over a real SMTP sink."""

from __future__ import annotations

import asyncio
import os
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from relay.core.errors import CryptoError
from relay.core.gpg import GnuPG
from relay.core.sequoia import Sequoia
from relay.model import Delivery, DeliveryStatus
from relay.runners.crypto_workers import DEPTH, CryptoWorkers, WorkerLost
from tests.support.keys import KeyFactory, Keyring
from tests.support.mail import pgp_mime_signed, text_entity
from tests.support.relayhome import LIST, OffsetClock, RelayHome, RelayThread
from tests.support.relayhome import smtp_post as post
from tests.support.smtpsink import SmtpSink

ROOT = Path(__file__).resolve().parent.parent
PASSPHRASE = "worker passphrase, never on a command line"
COPY = b"Content-Type: text/plain\r\n\r\nThe copy.\r\n"


# Tasks a worker runs: module-level, so a worker process is told them by name.


def pid(crypto: object) -> int:
    return os.getpid()


def seal(crypto: Sequoia | GnuPG, recipient: str, signer: str) -> bytes:
    return crypto.sign_encrypt(COPY, [recipient], signer)


def die(crypto: object) -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def echo(crypto: object, data: bytes) -> bytes:
    return data


def nap(crypto: object, seconds: float) -> None:
    time.sleep(seconds)


def worker_pids(parent: int) -> set[int]:
    """The spawned worker processes of `parent` (as `ps` shows them, not asked of the pool)."""
    found = set()
    for task in Path(f"/proc/{parent}/task").iterdir():
        for child in (task / "children").read_text().split():
            try:
                cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
            except FileNotFoundError:
                continue
            if b"relay.runners.crypto_workers" in cmdline:
                found.add(int(child))
    return found


def ignores_stop_signals(process: int) -> bool:
    """Whether the kernel shows SIGTERM and SIGINT ignored by `process` (its SigIgn mask)."""
    status = Path(f"/proc/{process}/status").read_text()
    mask = int(
        next(line for line in status.splitlines() if line.startswith("SigIgn:")).split()[1], 16
    )
    return all(mask & (1 << (sig - 1)) for sig in (signal.SIGTERM, signal.SIGINT))


def alive(process: int) -> bool:
    try:
        state = Path(f"/proc/{process}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


@pytest.fixture
def keyring(tmp_path: Path) -> tuple[Sequoia, str]:
    crypto = Sequoia(tmp_path / "keyring", PASSPHRASE)
    return crypto, crypto.generate_key("List", "list@example.org")


@pytest.fixture
def workers(keyring: tuple[Sequoia, str]) -> Iterator[CryptoWorkers]:
    pool = CryptoWorkers(keyring[0], 2)
    try:
        yield pool
    finally:
        pool.close()


def test_sequoia_copies_are_sealed_in_worker_processes_and_read_in_gpg(
    tmp_path: Path, keys: KeyFactory, keyring: tuple[Sequoia, str], workers: CryptoWorkers
) -> None:
    crypto, list_fpr = keyring
    member = keys.make("worker-m", "security@worker-m.example")
    crypto.import_keys(member.public)
    workers.wait_ready()
    started = worker_pids(os.getpid())
    assert len(started) == 2

    async def both() -> tuple[list[int], bytes]:
        pids = await asyncio.gather(*(workers.run(pid) for _ in range(8)))
        return pids, await workers.run(seal, member.fingerprint, list_fpr)

    pids, copy = asyncio.run(both())
    assert set(pids) <= started and os.getpid() not in pids
    client = Keyring(tmp_path / "client", member, trusted_public=(crypto.export_public(list_fpr),))
    plain, status = client.decrypt(copy)
    assert plain == COPY
    # Signed by the list key (its signing subkey: VALIDSIG names the primary last).
    assert any(line[0] == "VALIDSIG" and line[-1] == list_fpr for line in status), status


def test_gnupg_copies_are_sealed_in_worker_processes_too(tmp_path: Path, keys: KeyFactory) -> None:
    crypto = GnuPG(tmp_path / "gnupg")
    try:
        list_fpr = crypto.generate_key("List", "list@example.org")
        member = keys.make("worker-g", "security@worker-g.example")
        crypto.import_keys(member.public)
        pool = CryptoWorkers(crypto, 2)
        try:
            started = set(pool.wait_ready())
            assert worker_pids(os.getpid()) == started and os.getpid() not in started

            async def sealed() -> tuple[int, bytes]:
                return await pool.run(pid), await pool.run(seal, member.fingerprint, list_fpr)

            sealed_in, copy = asyncio.run(sealed())
        finally:
            pool.close()
        assert sealed_in in started
        client = Keyring(
            tmp_path / "client", member, trusted_public=(crypto.export_public(list_fpr),)
        )
        plain, status = client.decrypt(copy)
        assert plain == COPY
        assert any(line[0] == "VALIDSIG" and line[-1] == list_fpr for line in status), status
    finally:
        crypto.close()


def test_a_key_imported_after_the_workers_started_is_used_at_once(
    keys: KeyFactory, keyring: tuple[Sequoia, str], workers: CryptoWorkers
) -> None:
    crypto, list_fpr = keyring
    workers.wait_ready()
    late = keys.make("worker-late", "security@worker-late.example")
    crypto.import_keys(late.public)  # the relay's process writes; the workers read the folder
    copy = asyncio.run(workers.run(seal, late.fingerprint, list_fpr))
    assert copy.startswith(b"-----BEGIN PGP MESSAGE-----")


def test_a_refusal_in_a_worker_is_raised_as_itself(
    keyring: tuple[Sequoia, str], workers: CryptoWorkers
) -> None:
    _, list_fpr = keyring
    with pytest.raises(CryptoError, match="no key"):
        asyncio.run(workers.run(seal, "AB" * 20, list_fpr))
    assert asyncio.run(workers.run(pid)) != os.getpid()  # the pool goes on


def test_a_worker_that_dies_fails_its_copy_and_a_new_worker_takes_its_place(
    workers: CryptoWorkers,
) -> None:
    before = set(workers.wait_ready())
    with pytest.raises(WorkerLost, match=r"a crypto worker process died \(killed by SIGKILL\)"):
        asyncio.run(workers.run(die))

    async def many() -> list[int]:
        return await asyncio.gather(*(workers.run(pid) for _ in range(20)))

    after = set(asyncio.run(many()))
    assert len(after) == 2 and len(after & before) == 1  # the other worker went on
    assert worker_pids(os.getpid()) == after


def test_the_copy_queued_behind_the_one_that_killed_its_worker_is_sealed_by_another(
    keyring: tuple[Sequoia, str],
) -> None:
    pool = CryptoWorkers(keyring[0], 1)
    try:
        (first,) = pool.wait_ready()

        async def both() -> list[object]:
            return await asyncio.gather(pool.run(die), pool.run(pid), return_exceptions=True)

        died, sealed_by = asyncio.run(both())
        assert isinstance(died, WorkerLost)
        assert isinstance(sealed_by, int) and sealed_by not in (first, os.getpid())
    finally:
        pool.close()


def test_a_copy_larger_than_the_pipe_goes_through_whole(workers: CryptoWorkers) -> None:
    big = os.urandom(3 * 1024 * 1024)  # the pipe holds 64 KiB: written and read in parts

    async def twice() -> list[bytes]:
        return await asyncio.gather(workers.run(echo, big), workers.run(echo, big[::-1]))

    assert asyncio.run(twice()) == [big, big[::-1]]


def test_a_copy_given_up_on_leaves_the_workers_as_they_were(workers: CryptoWorkers) -> None:
    workers.wait_ready()

    async def give_up_then_ask() -> int:
        slow = asyncio.ensure_future(workers.run(nap, 0.3))
        await asyncio.sleep(0.05)
        slow.cancel()
        with pytest.raises(asyncio.CancelledError):
            await slow
        return await workers.run(pid)

    assert asyncio.run(give_up_then_ask()) in worker_pids(os.getpid())


def test_workers_ignore_sigterm_and_sigint_the_relay_stops_them_itself(
    workers: CryptoWorkers,
) -> None:
    workers.wait_ready()
    started = worker_pids(os.getpid())
    assert len(started) == 2
    assert all(ignores_stop_signals(p) for p in started)
    for process in started:
        os.kill(process, signal.SIGTERM)
        os.kill(process, signal.SIGINT)
    time.sleep(0.3)
    assert all(alive(p) for p in started)
    assert asyncio.run(workers.run(pid)) in started
    workers.close()
    deadline = time.monotonic() + 10
    while any(alive(p) for p in started) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(alive(p) for p in started)


def run_relay_and_kill_it(crypto: Sequoia, wait: str) -> set[int]:
    """Start a relay-like process with two workers (`wait`: `wait_ready` for them started
    and their keyring open, `start` not to wait at all), SIGKILL it; its workers' ids."""
    script = (
        "import sys, time\n"
        "from relay.core.sequoia import Sequoia\n"
        "from relay.runners.crypto_workers import CryptoWorkers\n"
        "pool = CryptoWorkers(Sequoia(sys.argv[1], sys.argv[2]), 2)\n"
        f"pool.{wait}()\n"
        "print('ready', flush=True)\n"
        "time.sleep(120)\n"
    )
    relay = subprocess.Popen(
        [sys.executable, "-c", script, str(crypto.home), PASSPHRASE],
        stdout=subprocess.PIPE,
        cwd=ROOT,
    )
    try:
        assert relay.stdout is not None and relay.stdout.readline() == b"ready\n"
        started = worker_pids(relay.pid)
        assert len(started) == 2
    finally:
        relay.kill()
        relay.wait(10)
    return started


def wait_until_ended(processes: set[int], seconds: float) -> set[int]:
    deadline = time.monotonic() + seconds
    while any(alive(p) for p in processes) and time.monotonic() < deadline:
        time.sleep(0.05)
    return {p for p in processes if alive(p)}


def test_workers_end_when_the_relay_is_killed(keyring: tuple[Sequoia, str]) -> None:
    """SIGKILL leaves the relay no chance to stop them; they hold the list key, and must go."""
    started = run_relay_and_kill_it(keyring[0], "wait_ready")
    assert wait_until_ended(started, 30) == set()


def test_workers_still_starting_when_the_relay_is_killed_end_too(
    keyring: tuple[Sequoia, str],
) -> None:
    """Killed before its workers have run a line of their own: each finds itself another's
    child by then, and must still know whose it was."""
    started = run_relay_and_kill_it(keyring[0], "start")
    assert wait_until_ended(started, 30) == set()


def test_a_process_holding_the_list_key_writes_no_core_file(
    keyring: tuple[Sequoia, str], workers: CryptoWorkers
) -> None:
    """A crash must not put the key on disk: the relay (here a fresh process that opens the
    keyring) and each worker run with a core file size limit of 0 (the soft limit, which a
    crash obeys)."""
    crypto, _ = keyring
    script = (
        "import resource, sys\n"
        "from relay.core.sequoia import Sequoia\n"
        "print(resource.getrlimit(resource.RLIMIT_CORE))\n"
        "Sequoia(sys.argv[1], sys.argv[2]).list_keys()\n"
        "print(resource.getrlimit(resource.RLIMIT_CORE))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(crypto.home), PASSPHRASE],
        capture_output=True,
        check=True,
        cwd=ROOT,
        # A limit to lower, so the first line shows the change is the keyring's doing.
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_CORE, (1 << 20, 1 << 20)),
    )
    assert done.stdout.decode().splitlines() == [f"({1 << 20}, {1 << 20})", f"(0, {1 << 20})"]
    workers.wait_ready()
    for process in worker_pids(os.getpid()):
        limits = Path(f"/proc/{process}/limits").read_text().splitlines()
        assert (
            next(line for line in limits if line.startswith("Max core file size")).split()[4] == "0"
        )


def test_the_passphrase_is_in_no_worker_arguments_or_environment(
    workers: CryptoWorkers,
) -> None:
    workers.wait_ready()
    started = worker_pids(os.getpid())
    assert started
    for process in started:
        for view in ("cmdline", "environ"):
            assert PASSPHRASE.encode() not in Path(f"/proc/{process}/{view}").read_bytes()


def test_a_fan_out_whose_worker_was_killed_reaches_every_member_once(
    tmp_path: Path, keys: KeyFactory
) -> None:
    members = [keys.make(f"wk{n}", f"security@wk{n}.example") for n in range(6)]
    with SmtpSink() as sink:
        home = RelayHome(tmp_path, keys, smarthost=f"127.0.0.1:{sink.port}")
        src = keys.make("src", "src@example.org")
        home.add_sender(src)
        for member in members:
            home.add_member(member)
        clock = OffsetClock()
        with RelayThread(home.settings, clock=clock, dispatch=False) as relay:
            post_ = pgp_mime_signed(
                home.client(src),
                src.fingerprint,
                text_entity("The embargoed text.\n"),
                subject="[EMBARGOED] CVE-2026-4242: workers",
                sender=src.address,
                to=LIST,
            )
            relay.run(post(relay.port, post_))
            dispatcher = relay.relay.dispatcher
            pool = dispatcher._workers
            started = pool.wait_ready()
            for process in started:
                os.kill(process, signal.SIGSTOP)  # so each is killed holding copies
            fan_out = asyncio.run_coroutine_threadsafe(dispatcher.run_once(), relay.loop)
            deadline = time.monotonic() + 30
            while not all(len(w.held) == DEPTH for w in pool._processes):
                assert time.monotonic() < deadline, "the workers were never given copies"
                time.sleep(0.01)
            for process in started:
                os.kill(process, signal.SIGKILL)  # out of memory, say
            fan_out.result(60)
            with home.db.transaction() as session:
                lost = {
                    d.recipient: d.last_reason or ""
                    for d in session.execute(select(Delivery)).scalars()
                    if d.status != DeliveryStatus.SENT
                }
            # The copy each was sealing is counted as the relay's own error, retried on the
            # schedule (nothing was sent); the one queued behind it went to a new worker.
            assert len(lost) == 2
            assert all("a crypto worker process died" in r for r in lost.values())
            clock.offset = timedelta(hours=1)
            relay.run(dispatcher.run_once())
        with home.db.transaction() as session:
            deliveries = list(session.execute(select(Delivery)).scalars())
        assert {d.status for d in deliveries} == {DeliveryStatus.SENT}
        assert {d.recipient for d in deliveries if d.errors} == set(lost)
        received = sorted(r for m in sink.messages for r in m.rcpt_tos)
        assert received == sorted(m.address for m in members)

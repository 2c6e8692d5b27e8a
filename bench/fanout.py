"""Fan-out benchmark: one signed advisory (20 KB, 1 MB) to 10, 50 and 200 members, with
each OpenPGP backend, against its floor and against Schleuder, all in the same run.

Run: `make bench` (or `.venv/bin/python -m bench.fanout`; `--backend gnupg|sequoia|both`
picks the relay's `[gnupg] backend`, both by default; `--no-peer` skips Schleuder).

For each advisory, list size and backend, the relay runs as a real `relay serve` process
with that backend and a lean SMTP sink (`bench/sink.py`, standing in for the next-hop MTA)
as another; the clock starts when the client reads the relay's `250` and stops when the
sink accepts the last copy. The relay is measured running: it has fanned out one post (of
another advisory, to the same members) since it started; that first post's time is shown
too ("first post s": a relay just started pays once for statement compilation, key
listings and connections). Schleuder has no running state to measure: its MTA starts one
`schleuder work` per post, by design. Then, in the same run, on the same keys and sink:

- the floor, the bare cost of the same work with nothing around it: the same signed and
  encrypted copies through the same backend, on the relay's own keyring
  (`relay.core.keyrings.open_keyring`), with as many workers, plus the bare SMTP
  transactions of the relay's copies (the same bytes) through the relay's own SMTP client
  over as many reused connections as the relay opens, to the last copy the sink accepted.
  The ratio relay/floor is what the relay's own work (database, MIME, queue) adds;
- the peer, once per advisory and list size, when Debian's `schleuder` is installed
  (`bench/schleuder.py`): a list with the relay's list key (of the last backend measured;
  both make ed25519/cv25519 keys) and the members' keys, one `schleuder work` per post of
  the same message, from its start to the last copy the sink accepted. Each backend's relay
  time is compared with it.
"""

from __future__ import annotations

import argparse
import asyncio
import operator
import os
import platform
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import aiosmtplib

from bench import schleuder
from relay.core.crypto import Crypto
from relay.core.gpg import GnuPG, stop_agent
from relay.core.keyrings import open_keyring
from relay.outbound.transport import Outcome, Transport, transports_for
from relay.runners.crypto_workers import CryptoWorkers
from tests.support.keys import KeyFactory, Keyring, TestKey
from tests.support.mail import pgp_mime_signed, text_entity
from tests.support.relayhome import LIST, RelayHome

SIZES = (10, 50, 200)
ADVISORIES = (20 * 1024, 1024 * 1024)  # bytes of advisory text
WORKERS = 2
# The relay's `[gnupg] backend`s, each with the class that does its crypto and its floor's.
BACKENDS = {"gnupg": "relay.core.gpg.GnuPG", "sequoia": "relay.core.sequoia.Sequoia"}
# The goals of the issue, judged on this run's numbers.
PEER_GOAL, PEER_AIM, PEER_GOAL_MEMBERS = 50, 100, 50
FLOOR_GOAL, FLOOR_GOAL_MEMBERS = 1.3, 200
# A signed 1 MB advisory is above the test configuration's 1 MiB limit.
MAX_MESSAGE = 4 * 1024 * 1024
SENDER = "src@example.org"
LIST_DOMAIN = LIST.split("@")[1]


def size_label(size: int) -> str:
    return f"{size // 1024**2} MB" if size % 1024**2 == 0 else f"{size // 1024} KB"


def advisory_text(size: int = 20 * 1024) -> str:
    paragraph = (
        "A security issue was discovered in kube-apiserver that could allow an attacker\n"
        "with the ability to create Services to intercept traffic of other tenants.\n"
        "Affected versions: v1.30.0 - v1.30.4, v1.31.0 - v1.31.2. Mitigation: restrict\n"
        "the create verb on Services of type ExternalName to trusted principals.\n\n"
    )
    return (paragraph * (size // len(paragraph) + 1))[:size]


def advisory_body(size: int) -> str:
    """`size` bytes of advisory text that compress about as much as real prose, not a
    hundredfold as one paragraph repeated would (gpg compresses before it encrypts): the
    advisory's paragraph, then a changelog of varied lines, the same in every run."""
    rng = random.Random(size)
    head = advisory_text(1024).split("\n\n", 1)[0] + "\n\n"
    vocabulary = sorted(set(head.split()))
    lines = [head]
    length = len(head)
    while length < size:
        words = " ".join(rng.choice(vocabulary) for _ in range(rng.randint(6, 12)))
        line = f"{rng.getrandbits(48):012x} {words}\n"
        lines.append(line)
        length += len(line)
    return "".join(lines)[:size]


def compression(text: str) -> float:
    data = text.encode()
    return len(data) / len(zlib.compress(data, 6))


def sink_folder(root: Path) -> Path:
    """A new folder for the sink's copies, in memory (/dev/shm) where there is one: written
    to this machine's disk, the sink's copies cost it 0.45 ms each at first and 1.3 ms once
    a few hundred were there (200 copies of 30 KB: 0.09 s, then 0.26 s of its CPU), taken
    from the two cores the relay and its floor run on; in memory, 0.05 s throughout."""
    memory = Path("/dev/shm")
    where = memory if memory.is_dir() else root
    return Path(tempfile.mkdtemp(prefix="relay-bench-sink-", dir=where))


def start_sink(out: Path) -> tuple[subprocess.Popen[bytes], int]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.sink", "--port", "0", "--out", str(out)],
        stdout=subprocess.PIPE,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline().decode()
    return proc, int(line.rsplit(":", 1)[1])


def start_relay(config: Path, log: Path) -> tuple[subprocess.Popen[bytes], int]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "relay", "--config", str(config), "serve"],
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        env=dict(os.environ, PYTHONUNBUFFERED="1"),
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for line in log.read_text(errors="replace").splitlines():
            if "listening" in line and "port=" in line:
                return proc, int(line.rsplit("port=", 1)[1].split()[0])
        time.sleep(0.02)
    proc.kill()
    raise RuntimeError(f"relay did not start: {log.read_text()}")


async def post(port: int, data: bytes) -> int:
    smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, timeout=60)
    await smtp.connect()
    await smtp.sendmail(SENDER, [LIST], data)
    acknowledged = time.time_ns()
    smtp.close()
    return acknowledged


def wait_for(
    out: Path, count: int, timeout: float = 300, *, besides: frozenset[Path] = frozenset()
) -> list[Path]:
    """The sink's files once `count` of them are there, leaving out those in `besides`.
    The copies' times are the sink's own, so this looks only every 20 ms and only counts
    names: a glob of a thousand copies every 10 ms took 40% of a core from the relay."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if sum(name.endswith(".eml") for name in os.listdir(out)) >= len(besides) + count:
            return sorted(set(out.glob("*.eml")) - besides)
        time.sleep(0.02)
    found = sorted(set(out.glob("*.eml")) - besides)
    raise RuntimeError(f"only {len(found)} of {count} copies arrived")


def arrived(path: Path) -> int:
    """The sink's clock (ns) when it accepted the copy in `path`."""
    return int(path.name.split("-", 1)[0])


def recipient(path: Path) -> str:
    return path.name.split("-", 2)[2].removesuffix(".eml")


@dataclass
class Side:
    """One backend's fan-out: the relay's time (warm), its first post's, its floor's parts."""

    relay: float
    crypto: float
    smtp: float
    first: float = 0.0  # the first post after the relay started (cold: see `Bench.relay`)

    @property
    def floor(self) -> float:
        return self.crypto + self.smtp


@dataclass
class Run:
    sides: dict[str, Side]  # by backend
    peer: float | None


class Bench:
    def __init__(self, factory: KeyFactory, members: int, body: str) -> None:
        self.factory = factory
        self.src = factory.make("src", SENDER)
        self.members = [factory.make(f"m{n}", f"security@m{n}.example") for n in range(members)]
        self.addresses = {m.address for m in self.members}
        self.body = body

    def message(self, home: RelayHome, cve: str = "CVE-2026-0000", note: str = "") -> bytes:
        return pgp_mime_signed(
            home.client(self.src),
            self.src.fingerprint,
            text_entity(note + self.body),
            subject=f"[EMBARGOED] {cve}: benchmark",
            sender=SENDER,
            to=LIST,
        )

    def once(self, root: Path, backends: Sequence[str], peer: bool) -> Run:
        """One fan-out through the relay with each of `backends`, their floors and, with
        `peer`, through Schleuder, all to one sink."""
        root.mkdir(parents=True)
        out = sink_folder(root)
        sink, sink_port = start_sink(out)
        try:
            sides = {}
            for backend in backends:
                home, data = self.set_up(root / backend, backend, sink_port)
                sides[backend] = self.side(root / backend, home, data, sink_port, out)
            # Schleuder gets the last relay's list key and message.
            peer_s = self.peer(root / "schleuder", sink_port, out, home, data) if peer else None
            return Run(sides, peer_s)
        finally:
            sink.send_signal(signal.SIGTERM)
            sink.wait(10)
            shutil.rmtree(out, ignore_errors=True)
            stop_agents(root)

    def set_up(self, root: Path, backend: str, sink_port: int) -> tuple[RelayHome, bytes]:
        """A relay with `backend`, the sender and the members, and the sender's post."""
        root.mkdir()
        home = RelayHome(root, self.factory, smarthost=f"127.0.0.1:{sink_port}", backend=backend)
        config = home.config_path.read_text()
        home.config_path.write_text(
            config.replace("max_message_size = 1048576", f"max_message_size = {MAX_MESSAGE}")
        )
        assert home.settings.delivery.workers == WORKERS, "the floor runs the relay's workers"
        home.add_sender(self.src)
        for member in self.members:
            home.add_member(member)
        data = self.message(home)
        self.first_post = self.message(home, "CVE-2026-0001", "The first post after a start.\n")
        home.db.dispose()
        return home, data

    def side(self, root: Path, home: RelayHome, data: bytes, port: int, out: Path) -> Side:
        """The relay's fan-out of `data`, then its floor with the same backend and keyring."""
        relay_s, first_s, copies = self.relay(home.config_path, root / "relay.log", out, data)
        crypto = open_keyring(home.settings.gnupg)
        try:
            crypto_s = crypto_floor(
                crypto,
                home.list_fpr,
                self.members,
                self.inner(root, copies),
                WORKERS,
            )
        finally:
            crypto.close()
        smtp_s = self.smtp_floor(home, out, copies)
        return Side(relay_s, crypto_s, smtp_s, first_s)

    def relay(
        self, config: Path, log: Path, out: Path, data: bytes
    ) -> tuple[float, float, list[Path]]:
        """Seconds from the relay's 250 to the sink's last copy, for `data` posted to a relay
        that has fanned out one post since it started (as a running relay has), and for that
        first post (a relay just started pays for first uses: statement compilation, key
        listings, connections); and the copies of `data`."""
        before = frozenset(out.glob("*.eml"))
        relay, port = start_relay(config, log)
        try:
            first_s, first = self.fan_out(port, out, self.first_post, before)
            relay_s, copies = self.fan_out(port, out, data, before | frozenset(first))
        finally:
            relay.send_signal(signal.SIGTERM)
            relay.wait(30)
        self.check(first, "relay (first post)")
        self.check(copies, "relay")
        return relay_s, first_s, copies

    def fan_out(
        self, port: int, out: Path, data: bytes, before: frozenset[Path]
    ) -> tuple[float, list[Path]]:
        acknowledged = asyncio.run(post(port, data))
        copies = wait_for(out, len(self.members), besides=before)
        return (max(arrived(f) for f in copies) - acknowledged) / 1e9, copies

    def check(self, copies: list[Path], who: str) -> None:
        if {recipient(f) for f in copies} != self.addresses or len(copies) != len(self.members):
            raise RuntimeError(f"{who}: the copies are not one per member")

    def inner(self, root: Path, copies: list[Path]) -> bytes:
        """The protected root a member decrypts from the relay's copy."""
        member0 = self.members[0]
        copy = next(f for f in copies if recipient(f) == member0.address).read_bytes()
        inner, _ = Keyring(root / "m0-client", member0).decrypt(copy)
        assert inner, "member 0 could not decrypt the relay's copy"
        return inner

    def smtp_floor(self, home: RelayHome, out: Path, copies: list[Path]) -> float:
        """The bare SMTP transactions of the relay's copies to the same sink, through the
        relay's own SMTP client (relay/outbound/transport.py) as its settings make it:
        seconds from the first connection to the last copy the sink accepted."""
        before = frozenset(out.glob("*.eml"))
        messages = [(recipient(f), f.read_bytes()) for f in copies]
        settings = home.settings
        transport = transports_for(settings.delivery, settings.smtp.hostname or LIST_DOMAIN)
        started = time.time_ns()
        asyncio.run(send_all(transport, messages, settings.delivery.connections))
        sent = wait_for(out, len(messages), besides=before)
        return (max(arrived(f) for f in sent) - started) / 1e9

    def peer(self, root: Path, port: int, out: Path, home: RelayHome, data: bytes) -> float:
        """Schleuder with `home`'s list key, the members' keys, the same message and sink:
        seconds from the start of `schleuder work` to the last copy the sink accepted."""
        peer = schleuder.Schleuder(root, port)
        try:
            peer.create_list(
                LIST,
                list_secret(home, root / "list-key"),
                [self.src.public, *(m.public for m in self.members)],
                [(m.address, m.fingerprint) for m in self.members],
                admin=(self.src.address, self.src.fingerprint),
            )
            before = frozenset(out.glob("*.eml"))
            started = time.time_ns()
            done = peer.work(LIST, data)
            if done.returncode != 0:
                output = (done.stdout + done.stderr).decode(errors="replace")
                raise RuntimeError(f"schleuder work failed ({done.returncode}): {output}")
            copies = wait_for(out, len(self.members), timeout=30, besides=before)
        finally:
            peer.close()
        self.check(copies, "Schleuder")
        return (max(arrived(f) for f in copies) - started) / 1e9


async def send_all(
    transport_for: Callable[[], Transport], messages: list[tuple[str, bytes]], connections: int
) -> None:
    """Each message in its own transaction, over `connections` reused sessions."""
    queue: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue()
    for message in messages:
        queue.put_nowait(message)

    async def session() -> None:
        transport = transport_for()
        try:
            while not queue.empty():
                to, data = queue.get_nowait()
                result = await transport.send(f"bounces@{LIST_DOMAIN}", to, data)
                if result.outcome != Outcome.SENT:
                    raise RuntimeError(f"the sink refused a copy: {result.code} {result.reason}")
        finally:
            await transport.close()

    await asyncio.gather(*(session() for _ in range(min(connections, len(messages)))))


def crypto_floor(
    crypto: Crypto, list_fpr: str, members: list[TestKey], inner: bytes, workers: int
) -> float:
    """The same copies, bare: one signed and encrypted OpenPGP message per member through
    the relay's own crypto workers (relay/runners/crypto_workers.py: processes of its
    own for either backend), as many as the relay runs, all started and each with its
    keyring read before the clock starts;
    `inner` is the protected root of the relay's copy."""
    pool = CryptoWorkers(crypto, workers)
    try:
        pool.wait_ready()

        async def all_copies() -> list[bytes]:
            copy_for = [
                operator.methodcaller("sign_encrypt", inner, [m.fingerprint], list_fpr)
                for m in members
            ]
            return await asyncio.gather(*(pool.run(task) for task in copy_for))

        started = time.perf_counter()
        copies = asyncio.run(all_copies())
        elapsed = time.perf_counter() - started
    finally:
        pool.close()
    assert len(copies) == len(members) and all(c.startswith(b"-----BEGIN PGP") for c in copies)
    return elapsed


def list_secret(home: RelayHome, folder: Path) -> bytes:
    """The relay's list key, armoured and unprotected, for Schleuder's keyring: moved
    through a GnuPG home of its own (`folder`) whichever backend holds it."""
    GnuPG(folder).import_secret_key(home.crypto.export_secret_key(home.list_fpr, "bench"), "bench")
    return export_secret(folder)


def export_secret(gnupg_home: Path) -> bytes:
    """The list key of a GnuPG home, armoured, as gpg exports it."""
    return subprocess.run(
        ["gpg", "--homedir", str(gnupg_home), "--batch", "--armor", "--export-secret-keys"],
        capture_output=True,
        check=True,
    ).stdout


def stop_agents(folder: Path) -> None:
    """Stop the gpg-agents of every GnuPG home under `folder` (gpg leaves one running per
    home it used, and hundreds of them would outlive the benchmark)."""
    for socket in folder.rglob("S.gpg-agent"):
        stop_agent(socket.parent)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def load() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def median_side(sides: list[Side]) -> Side:
    """Each measure's median over the runs; the floor's parts from its median run, so that
    they add up."""
    floor_side = sorted(sides, key=lambda r: r.floor)[len(sides) // 2]
    return Side(
        statistics.median(r.relay for r in sides),
        floor_side.crypto,
        floor_side.smtp,
        statistics.median(r.first for r in sides),
    )


def median_run(runs: list[Run]) -> Run:
    peers = [r.peer for r in runs if r.peer is not None]
    return Run(
        {b: median_side([r.sides[b] for r in runs]) for b in runs[0].sides},
        statistics.median(peers) if peers else None,
    )


HEADER = (
    "members",
    "backend",
    "relay s",
    "first post s",
    "floor s",
    "= crypto s",
    "+ SMTP s",
    "relay/floor",
    "Schleuder s",
    "Schleuder/relay",
)
WIDTHS = [max(len(h), 8) for h in HEADER]


def row(members: int, backend: str, side: Side, peer: float | None) -> str:
    values = (
        members,
        backend,
        f"{side.relay:.3f}",
        f"{side.first:.3f}",
        f"{side.floor:.3f}",
        f"{side.crypto:.3f}",
        f"{side.smtp:.3f}",
        f"{side.relay / side.floor:.2f}",
        "-" if peer is None else f"{peer:.2f}",
        "-" if peer is None else f"{peer / side.relay:.1f}x",
    )
    return "  ".join(f"{v:>{w}}" for v, w in zip(values, WIDTHS, strict=True))


def print_table(size: int, rows: list[tuple[int, Run]], repeat: int, peer_repeat: int) -> None:
    print(
        f"\nOne {size_label(size)} signed advisory ({size:,} bytes of text), {WORKERS} workers; "
        f"median of {repeat} runs (Schleuder ran in {peer_repeat}); the text compresses "
        f"{compression(advisory_body(size)):.1f}:1 (zlib)\n"
    )
    print("  ".join(f"{h:>{w}}" for h, w in zip(HEADER, WIDTHS, strict=True)))
    for members, run in rows:
        for backend, side in run.sides.items():
            print(row(members, backend, side, run.peer))


def peer_goal(label: str, at: Side | None, peer: float | None, peer_note: str) -> str:
    goal = f"- {label}, {PEER_GOAL_MEMBERS} members, at least {PEER_GOAL}x faster than Schleuder"
    if at is None:
        return f"{goal}: not measured (no {PEER_GOAL_MEMBERS}-member run)"
    if peer is None:
        return f"{goal}: not measured ({peer_note})"
    times = peer / at.relay
    verdict = "met" if times >= PEER_GOAL else "NOT met"
    aim = "met" if times >= PEER_AIM else "NOT met"
    return (
        f"{goal} in the same run: {verdict}: {times:.1f}x (relay {at.relay:.3f} s, "
        f"Schleuder {peer:.2f} s); the aim of {PEER_AIM}x: {aim}"
    )


def floor_goal(label: str, at: Side | None) -> str:
    goal = f"- {label}, relay/floor at most {FLOOR_GOAL} at {FLOOR_GOAL_MEMBERS} members"
    if at is None:
        return f"{goal}: not measured"
    ratio = at.relay / at.floor
    verdict = "met" if ratio <= FLOOR_GOAL else "NOT met"
    return (
        f"{goal}: {verdict}: {ratio:.2f} (relay {at.relay:.3f} s, floor {at.floor:.3f} s = "
        f"crypto {at.crypto:.3f} s + SMTP {at.smtp:.3f} s)"
    )


def goals(tables: dict[int, list[tuple[int, Run]]], backends: Sequence[str], note: str) -> None:
    for backend in backends:
        print(f"\nGoals with the {backend} backend ({BACKENDS[backend]}), relay and floor:")
        for size, rows in tables.items():
            label = size_label(size)
            by_members = dict(rows)
            at_peer = by_members.get(PEER_GOAL_MEMBERS)
            at_floor = by_members.get(FLOOR_GOAL_MEMBERS)
            peer = at_peer.peer if at_peer else None
            print(peer_goal(label, at_peer.sides[backend] if at_peer else None, peer, note))
            print(floor_goal(label, at_floor.sides[backend] if at_floor else None))


@dataclass
class Plan:
    """What to measure: list sizes, advisory sizes, backends, runs, and Schleuder's share."""

    sizes: list[int]
    advisories: list[int]
    backends: tuple[str, ...]
    repeat: int
    peer_sizes: set[int]
    peer_repeat: int


def make_keys(scratch: Path, members: int) -> KeyFactory:
    factory = KeyFactory(scratch / "keys")
    print(f"generating {members + 1} keys ...", file=sys.stderr)
    factory.make("src", SENDER)
    for n in range(members):
        factory.make(f"m{n}", f"security@m{n}.example")
    return factory


def measure(scratch: Path, plan: Plan, tables: dict[int, list[tuple[int, Run]]]) -> None:
    """Fill `tables` (advisory size: rows of list size and median run)."""
    factory = make_keys(scratch, max(plan.sizes))
    for size in plan.advisories:
        rows = []
        body = advisory_body(size)
        for members in plan.sizes:
            bench = Bench(factory, members, body)
            runs = []
            for attempt in range(plan.repeat):
                peer = members in plan.peer_sizes and attempt < plan.peer_repeat
                print(
                    f"{size:,} bytes, {members} members, run {attempt + 1}, "
                    + ", ".join(plan.backends)
                    + (", Schleuder" if peer else "")
                    + f" (load average {load()})",
                    file=sys.stderr,
                )
                root = scratch / f"a{size}-n{members}-{attempt}"
                run = bench.once(root, plan.backends, peer)
                runs.append(run)
                print(
                    "  "
                    + "; ".join(
                        f"{name}: relay {side.relay:.3f} s, floor {side.floor:.3f} s "
                        f"({side.crypto:.3f} + {side.smtp:.3f})"
                        for name, side in run.sides.items()
                    )
                    + (f"; Schleuder {run.peer:.3f} s" if run.peer is not None else ""),
                    file=sys.stderr,
                )
            rows.append((members, median_run(runs)))
        tables[size] = rows


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES), help="members")
    parser.add_argument(
        "--advisories", type=int, nargs="+", default=list(ADVISORIES), help="bytes of text"
    )
    parser.add_argument(
        "--backend",
        choices=[*BACKENDS, "both"],
        default="both",
        help="the relay's [gnupg] backend (and its floor's)",
    )
    parser.add_argument("--repeat", type=int, default=3, help="runs per size; the median is shown")
    parser.add_argument("--no-peer", action="store_true", help="skip Schleuder")
    parser.add_argument(
        "--peer-sizes",
        type=int,
        nargs="+",
        default=list(SIZES),
        help="list sizes Schleuder runs at (it is slow)",
    )
    parser.add_argument(
        "--peer-repeat",
        type=int,
        default=None,
        help="Schleuder's runs per size, in the first runs (default: --repeat)",
    )
    return parser.parse_args()


def plan_of(args: argparse.Namespace) -> tuple[Plan, str]:
    """The plan, and why Schleuder runs where it does."""
    if args.no_peer:
        peer_sizes: set[int] = set()
        peer_note = "--no-peer"
    elif not schleuder.installed():
        peer_sizes = set()
        peer_note = "schleuder is not installed"
    else:
        peer_sizes = set(args.peer_sizes)
        peer_note = f"Schleuder ran at {sorted(peer_sizes)} members only"
    repeat = args.repeat
    peer_repeat = min(repeat if args.peer_repeat is None else args.peer_repeat, repeat)
    backends = tuple(BACKENDS) if args.backend == "both" else (args.backend,)
    plan = Plan(args.sizes, args.advisories, backends, repeat, peer_sizes, peer_repeat)
    return plan, peer_note


def main() -> None:
    plan, peer_note = plan_of(parse_args())
    print(f"machine: {cpu_model()}, {os.cpu_count()} cores; load average at start: {load()}")
    print(
        f"Python {platform.python_version()}, gpg {GnuPG.version_text()}, "
        f"pysequoia {metadata.version('pysequoia')}, "
        + ("Schleuder not run" if not plan.peer_sizes else f"Schleuder {schleuder.version()}")
    )
    tables: dict[int, list[tuple[int, Run]]] = {}
    with tempfile.TemporaryDirectory(prefix="relay-bench-") as scratch:
        try:
            measure(Path(scratch), plan, tables)
        finally:
            stop_agents(Path(scratch))
    for size, rows in tables.items():
        print_table(size, rows, plan.repeat, plan.peer_repeat if plan.peer_sizes else 0)
    goals(tables, plan.backends, peer_note)
    print(f"\nload average at end: {load()}")


if __name__ == "__main__":
    main()

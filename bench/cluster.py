"""Cluster benchmark: one node against two on one PostgreSQL database, and lift lateness.

Run: `make bench` (or `.venv/bin/python -m bench.cluster`); needs PostgreSQL on
127.0.0.1:5432 (`scripts/ensure_postgres.sh`).

Every run gets a throwaway database and real `relay serve` processes
(tests/support/cluster.py: each node its own folder, GnuPG home and port), delivering to
the lean sink process of `bench/sink.py`:

- fan-out: one signed 20 KB advisory to 200 members, posted to node 0; seconds from its
  `250` to the last copy the sink accepted (median of `--repeat` runs);
- intake: 1,000 signed posts from 16 concurrent SMTP clients, spread over the nodes, each
  to 2 members; seconds from the first connection to the last `250`, and to the last copy;
- lift lateness: 100 advisories lifting within one minute (two at some seconds), on two
  nodes; for each, the time from its lift time to the audit row `advisory.lifted`, written
  in the lift's transaction just before it commits.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiosmtplib
from sqlalchemy import select, text

from bench.fanout import advisory_text, start_sink, wait_for
from relay.core.gpg import GnuPG
from relay.model import Advisory, AuditEvent
from tests.support import databases
from tests.support.cluster import SENDER, Cluster
from tests.support.keys import KeyFactory, Keyring
from tests.support.mail import pgp_mime_signed, text_entity
from tests.support.relayhome import LIST, smtp_post

MEMBERS = 200
POSTS = 1000
CLIENTS = 16
LIFTS = 100
THREAD = "CVE-2026-7000"  # the advisory every intake post names


@contextmanager
def cluster_of(root: Path, factory: KeyFactory, nodes: int, members: int) -> Iterator[Cluster]:
    """`nodes` running nodes on a new database, delivering to a new sink; `root/sink` holds
    what it accepted."""
    out = root / "sink"
    out.mkdir(parents=True)
    sink, port = start_sink(out)
    try:
        with Cluster(root, factory, f"127.0.0.1:{port}", count=nodes, members=members) as c:
            c.start()
            yield c
    finally:
        sink.send_signal(signal.SIGTERM)
        sink.wait(10)
        databases.drop_made()


def arrivals(out: Path) -> list[int]:
    """When the sink accepted each copy (ns), from its file names."""
    return [int(f.name.split("-", 1)[0]) for f in out.glob("*.eml")]


async def _post(port: int, data: bytes) -> int:
    smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, timeout=60)
    await smtp.connect()
    await smtp.sendmail(SENDER, [LIST], data)
    acknowledged = time.time_ns()
    smtp.close()
    return acknowledged


def fanout(root: Path, factory: KeyFactory, nodes: int) -> float:
    with cluster_of(root, factory, nodes, MEMBERS) as cluster:
        data = cluster.signed_post(advisory_text(), subject="[EMBARGOED] CVE-2026-0000: bench")
        acknowledged = asyncio.run(_post(cluster.nodes[0].port, data))
        wait_for(root / "sink", MEMBERS)
        return (max(arrivals(root / "sink")) - acknowledged) / 1e9


async def _post_all(ports: list[int], posts: list[bytes]) -> int:
    """Post each to a node in turn from CLIENTS clients, trying again after a `451` (the
    edge's work pools are full) as a sending MTA would, only sooner; the `451`s."""
    gate = asyncio.Semaphore(CLIENTS)
    busy = 0

    async def one(port: int, data: bytes) -> None:
        nonlocal busy
        async with gate:
            while (reply := await smtp_post(port, data))[0] == 451:
                busy += 1
                await asyncio.sleep(0.05)
            assert reply[0] == 250, reply

    await asyncio.gather(*(one(ports[n % len(ports)], d) for n, d in enumerate(posts)))
    return busy


def intake(
    root: Path, factory: KeyFactory, nodes: int, posts: list[bytes]
) -> tuple[float, float, int]:
    """Seconds to the last `250`, to the last copy, and the `451`s answered on the way."""
    with cluster_of(root, factory, nodes, 2) as cluster:
        result = cluster.cli("advisory", "create", THREAD, "--title", "Intake benchmark")
        assert result.exit_code == 0, result.output
        started = time.time_ns()
        busy = asyncio.run(_post_all([n.port for n in cluster.nodes], posts))
        accepted = time.time_ns()
        wait_for(root / "sink", 2 * len(posts), timeout=600)
        last = max(arrivals(root / "sink"))
        return (accepted - started) / 1e9, (last - started) / 1e9, busy


def lift_lateness(root: Path, factory: KeyFactory, nodes: int, lifts: int) -> list[float]:
    """Seconds from each lift time to its committed lift, for `lifts` lifts in one minute."""
    with cluster_of(root, factory, nodes, 2) as cluster:
        first = (datetime.now(UTC) + timedelta(seconds=30)).replace(microsecond=0)
        lift_at = {
            f"CVE-2026-{8000 + n}": first + timedelta(seconds=n * 60 // lifts) for n in range(lifts)
        }
        for advisory_id, at in lift_at.items():
            result = cluster.cli(
                "advisory", "create", advisory_id, "--title", "Lift", "--lift", at.isoformat()
            )
            assert result.exit_code == 0, result.output
        if datetime.now(UTC) > first - timedelta(seconds=5):
            raise RuntimeError("creating the advisories took too long to measure their lifts")
        time.sleep((max(lift_at.values()) - datetime.now(UTC)).total_seconds() + 3)
        with cluster.db.transaction() as s:
            lifted = dict(
                s.execute(
                    select(AuditEvent.subject, AuditEvent.at).where(
                        AuditEvent.action == "advisory.lifted"
                    )
                ).all()
            )
            open_ = s.scalars(select(Advisory.id).where(Advisory.lifted_at.is_(None))).all()
        assert not open_, f"not lifted: {open_}"
        return [(lifted[f"advisory:{a}"] - at).total_seconds() for a, at in lift_at.items()]


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


def postgres_version() -> str:
    name = f"{databases.PREFIX}version"
    databases.create(name)
    try:
        from relay.core.database import Database

        db = Database(databases.url_of(name))
        with db.engine.connect() as conn:
            version = str(conn.execute(text("SHOW server_version")).scalar())
        db.dispose()
        return version.split()[0]
    finally:
        databases.drop_made()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="fan-out runs per node count")
    parser.add_argument("--posts", type=int, default=POSTS)
    parser.add_argument("--lifts", type=int, default=LIFTS)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="relay-bench-cluster-") as scratch_dir:
        scratch = Path(scratch_dir)
        factory = KeyFactory(scratch / "keys")
        print(f"generating {MEMBERS + 1} keys, signing {args.posts} posts ...", file=sys.stderr)
        src = factory.make("src", SENDER)
        for n in range(MEMBERS):
            factory.make(f"cluster{n}", f"security@cluster{n}.example")
        client = Keyring(scratch / "src-client", src)
        posts = [
            pgp_mime_signed(
                client,
                src.fingerprint,
                text_entity(f"X-Advisory: {THREAD}\n\nReport {n}: the patch applies.\n"),
                subject=f"Re: {THREAD}",
                sender=SENDER,
                to=LIST,
            )
            for n in range(args.posts)
        ]
        runs = iter(range(10_000))
        fan: dict[int, float] = {}
        took: dict[int, tuple[float, float, int]] = {}
        for nodes in (1, 2):
            print(f"fan-out and intake on {nodes} node(s) ...", file=sys.stderr)
            fan[nodes] = statistics.median(
                fanout(scratch / f"run{next(runs)}", factory, nodes) for _ in range(args.repeat)
            )
            took[nodes] = intake(scratch / f"run{next(runs)}", factory, nodes, posts)
        print("lift lateness on 2 nodes (about 95 s) ...", file=sys.stderr)
        late = lift_lateness(scratch / f"run{next(runs)}", factory, 2, args.lifts)
        report(fan, took, late, args)


def report(
    fan: dict[int, float],
    took: dict[int, tuple[float, float]],
    late: list[float],
    args: argparse.Namespace,
) -> None:
    print(
        f"\nPostgreSQL {postgres_version()}, gpg {GnuPG.version_text()}; each node workers=2, "
        f"connections=4; fan-out median of {args.repeat} runs\n"
    )
    rows = [
        (f"fan-out to {MEMBERS} members, s", fan[1], fan[2]),
        (f"intake of {args.posts} posts ({CLIENTS} clients), s", took[1][0], took[2][0]),
        ("intake, posts/s", args.posts / took[1][0], args.posts / took[2][0]),
        (f"intake to the last of {2 * args.posts} copies, s", took[1][1], took[2][1]),
        ("intake, 451 busy answers (tried again)", took[1][2], took[2][2]),
    ]
    print(f"{'':<44}{'1 node':>10}{'2 nodes':>10}")
    for label, one, two in rows:
        print(f"{label:<44}{one:>10.2f}{two:>10.2f}")
    p50, p99 = percentile(late, 0.5), percentile(late, 0.99)
    print(
        f"\n{args.lifts} lifts within one minute on 2 nodes, lift time to committed lift: "
        f"p50 {p50:.3f} s, p99 {p99:.3f} s, max {max(late):.3f} s"
    )
    met = {True: "met", False: "NOT met"}
    print(f"Goal: lift lateness p99 under 1 s: {met[p99 < 1.0]}.")
    print(
        "Goal: two nodes not slower than one: "
        f"fan-out {met[fan[2] <= fan[1]]}, intake {met[took[2][0] <= took[1][0]]}, "
        f"intake to the last copy {met[took[2][1] <= took[1][1]]}."
    )


if __name__ == "__main__":
    main()

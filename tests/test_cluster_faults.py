"""Faults of a relay of several nodes: real `relay serve` processes on one real PostgreSQL
database (each test makes its own), real gpg, a capturing sink as the smarthost.

A node killed mid fan-out, the scheduler's leader killed before a lift, both nodes
restarted around one, 16 clients posting to both at once, the database dropping every
connection, and (one node on SQLite) the database file locked while retries fall due.
"""

from __future__ import annotations

import email
import email.policy
import sqlite3
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
from sqlalchemy import func, select

from relay.model import Advisory, AuditEvent, DeliveryStatus, Message
from tests.support.cluster import Cluster, wait_until
from tests.support.keys import KeyFactory
from tests.support.smtpsink import Received, SmtpSink

FAILOVER = 6.0  # seconds, as tests/support/cluster.py configures the nodes


def _message_id(received: Received) -> str:
    return str(email.message_from_bytes(received.data, policy=email.policy.default)["Message-ID"])


def _all_sent(cluster: Cluster, expected: int) -> bool:
    statuses = Counter(d.status for d in cluster.deliveries())
    return statuses == Counter({DeliveryStatus.SENT: expected})


def test_a_node_killed_mid_fanout_leaves_the_rest_to_the_other(
    tmp_path: Path, keys: KeyFactory
) -> None:
    members = 200
    with (
        SmtpSink(delay=0.1) as sink,
        Cluster(tmp_path, keys, f"127.0.0.1:{sink.port}", members=members) as cluster,
    ):
        cluster.start()
        code, _ = cluster.post(cluster.signed_post("Embargoed details.\n"))
        assert code == 250
        sink.wait_for(members // 2, timeout=60)
        # Both nodes claim copies; the one leading the scheduler goes, so the survivor
        # must also take over the lease and release the dead node's copies.
        victim = cluster.leader()
        (survivor,) = [n for n in cluster.nodes if n is not victim]
        victim.kill()
        in_flight = sum(
            1
            for d in cluster.deliveries()
            if d.status == DeliveryStatus.ACTIVE and d.lease_owner == victim.name
        )
        assert in_flight > 0
        assert len(sink.messages) < members, "the kill came too late to test anything"

        wait_until(lambda: _all_sent(cluster, members), "every copy sent", timeout=90)
        code, seen = cluster.status()
        assert code == 1
        by_name = {n["name"]: n for n in seen["nodes"]}
        assert not by_name[victim.name]["running"]
        assert by_name[survivor.name]["running"]
        assert any(victim.name in problem for problem in seen["problems"])
        assert survivor.running

    recorded = {d.recipient: d.copy_message_id for d in cluster.deliveries()}
    received = Counter(m.rcpt_tos[0] for m in sink.messages)
    assert set(received) == set(cluster.member_addresses)
    assert sum(received.values()) - members <= in_flight
    for message in sink.messages:
        # A copy sent twice (in flight at the kill) is the same copy: the same Message-ID.
        assert _message_id(message) == recorded[message.rcpt_tos[0]]


def _create_advisory(cluster: Cluster, advisory_id: str, lift_in: float) -> datetime:
    """An advisory lifting `lift_in` seconds from now (to the second); its lift time."""
    lift_at = (datetime.now(UTC) + timedelta(seconds=lift_in)).replace(microsecond=0)
    result = cluster.cli(
        "advisory", "create", advisory_id, "--title", "Cluster test", "--lift", lift_at.isoformat()
    )
    assert result.exit_code == 0, result.output
    return lift_at


def _lifted_once(cluster: Cluster, sink: SmtpSink, advisory_id: str) -> datetime:
    """The advisory was lifted by one lift: one audit row, one notice, one copy of it per
    member (each arrived once); its lifted_at."""
    with cluster.db.transaction() as s:
        advisory = s.get_one(Advisory, advisory_id)
        rows = s.scalar(
            select(func.count())
            .select_from(AuditEvent)
            .where(
                AuditEvent.action == "advisory.lifted",
                AuditEvent.subject == f"advisory:{advisory_id}",
            )
        )
        notices = [
            m.id
            for m in s.execute(select(Message).where(Message.advisory_id == advisory_id)).scalars()
            if m.subject.endswith("embargo lifted")
        ]
    assert advisory.lifted_at is not None
    assert rows == 1
    assert len(notices) == 1
    copies = [d for d in cluster.deliveries() if d.message_id == notices[0]]
    assert sorted(d.recipient for d in copies) == sorted(cluster.member_addresses)
    wanted = {d.copy_message_id for d in copies}
    wait_until(
        lambda: wanted <= {_message_id(m) for m in sink.messages}, "the lift notices", timeout=30
    )
    arrived = Counter(_message_id(m) for m in sink.messages)
    assert all(arrived[message_id] == 1 for message_id in wanted)
    return advisory.lifted_at


def test_the_leader_killed_before_a_lift_lifts_once_elsewhere(
    tmp_path: Path, keys: KeyFactory, sink: SmtpSink
) -> None:
    with Cluster(tmp_path, keys, f"127.0.0.1:{sink.port}", members=3) as cluster:
        cluster.start()
        lift_at = _create_advisory(cluster, "CVE-2026-1001", lift_in=6)
        leader = cluster.leader()
        time.sleep(max(0.0, (lift_at - datetime.now(UTC)).total_seconds() - 2))
        leader.kill()
        killed_at = datetime.now(UTC)
        lifted_at = wait_until(
            lambda: _lifted_at(cluster, "CVE-2026-1001"), "the lift", timeout=3 * FAILOVER
        )
        assert lifted_at - killed_at <= timedelta(seconds=FAILOVER)
        assert _lifted_once(cluster, sink, "CVE-2026-1001") == lifted_at
        assert cluster.leader() is not leader


def _lifted_at(cluster: Cluster, advisory_id: str) -> datetime | None:
    with cluster.db.transaction() as s:
        return s.get_one(Advisory, advisory_id).lifted_at


def test_both_nodes_restarted_around_a_lift_lift_once(
    tmp_path: Path, keys: KeyFactory, sink: SmtpSink
) -> None:
    with Cluster(tmp_path, keys, f"127.0.0.1:{sink.port}", members=3) as cluster:
        cluster.start()
        lift_at = _create_advisory(cluster, "CVE-2026-1002", lift_in=5)
        time.sleep(max(0.0, (lift_at - datetime.now(UTC)).total_seconds() - 1.5))
        cluster.terminate()
        assert _lifted_at(cluster, "CVE-2026-1002") is None  # stopped before the lift
        time.sleep(max(0.0, (lift_at - datetime.now(UTC)).total_seconds() + 0.5))
        cluster.start()
        wait_until(lambda: _lifted_at(cluster, "CVE-2026-1002"), "the lift", timeout=30)
        assert _lifted_once(cluster, sink, "CVE-2026-1002") >= lift_at


def test_sixteen_clients_posting_to_both_nodes_lose_nothing(
    tmp_path: Path, keys: KeyFactory, sink: SmtpSink
) -> None:
    posts = 64
    with Cluster(tmp_path, keys, f"127.0.0.1:{sink.port}", members=2) as cluster:
        cluster.start()
        _create_advisory(cluster, "CVE-2026-1003", lift_in=3600)
        # Half name an advisory, half make a new one each (the relay numbers them).
        data = [
            cluster.signed_post(("X-Advisory: CVE-2026-1003\n\n" if n % 2 else "") + f"Post {n}.\n")
            for n in range(posts)
        ]
        replies = cluster.post_many([(n % 2, d) for n, d in enumerate(data)], clients=16)
        assert [code for code, _ in replies] == [250] * posts, replies
        queued = [text.split("Queued as ", 1)[1].split()[0] for _, text in replies]
        assert len(set(queued)) == posts
        with cluster.db.transaction() as s:
            stored = set(s.execute(select(Message.id).where(Message.id.in_(queued))).scalars())
        assert stored == set(queued)
        copies = [d for d in cluster.deliveries() if d.message_id in stored]
        assert Counter(d.message_id for d in copies) == Counter({m: 2 for m in stored})
        wanted = {d.copy_message_id for d in copies}
        wait_until(
            lambda: wanted <= {_message_id(m) for m in sink.messages}, "every copy", timeout=90
        )
        assert all(
            d.status == DeliveryStatus.SENT for d in cluster.deliveries(cluster.member_addresses)
        )


def _terminate_connections(url: str) -> int:
    name = url.rsplit("/", 1)[1]
    dsn = url.replace("postgresql+psycopg://", "postgresql://").rsplit("/", 1)[0] + "/postgres"
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = %s AND pid <> pg_backend_pid()",
            (name,),
        ).fetchall()
    return len(rows)


def test_database_connections_dropped_mid_fanout_delivery_resumes(
    tmp_path: Path, keys: KeyFactory
) -> None:
    members = 120
    with (
        SmtpSink(delay=0.3) as sink,
        Cluster(tmp_path, keys, f"127.0.0.1:{sink.port}", members=members) as cluster,
    ):
        cluster.start()
        pids = [n.pid for n in cluster.nodes]
        code, _ = cluster.post(cluster.signed_post("Embargoed details.\n"))
        assert code == 250
        sink.wait_for(members // 4, timeout=60)
        # Drop every connection again and again for a while: some are idle in the pools,
        # some in the middle of a claim, a record or a heartbeat.
        dropped, until = 0, time.monotonic() + 2
        while time.monotonic() < until:
            dropped += _terminate_connections(cluster.url)
            time.sleep(0.05)
        assert dropped > 0
        assert len(sink.messages) < members
        wait_until(lambda: _all_sent(cluster, members), "every copy sent", timeout=90)
        assert {m.rcpt_tos[0] for m in sink.messages} == set(cluster.member_addresses)
        assert [n.pid for n in cluster.nodes] == pids and all(n.running for n in cluster.nodes)
        wait_until(lambda: _ok(cluster), "relay status ok", timeout=30)


def _ok(cluster: Cluster) -> tuple[int, dict] | None:
    code, seen = cluster.status()
    return (code, seen) if code == 0 else None


def test_a_locked_sqlite_file_answers_451_and_delivery_resumes(
    tmp_path: Path, keys: KeyFactory
) -> None:
    sink = SmtpSink().start()
    sink.stop()  # the smarthost is down; it comes back on the same port
    with Cluster(
        tmp_path, keys, f"127.0.0.1:{sink.port}", count=1, members=2, postgresql=False
    ) as cluster:
        cluster.start()
        code, _ = cluster.post(cluster.signed_post("Before the lock.\n"))
        assert code == 250
        wait_until(
            lambda: {d.status for d in cluster.deliveries()} == {DeliveryStatus.DEFERRED},
            "the copies deferred",
        )
        lock = sqlite3.connect(cluster.url.removeprefix("sqlite:///"), isolation_level=None)
        try:
            lock.execute("BEGIN EXCLUSIVE")
            locked_at = time.monotonic()
            refused = cluster.signed_post("During the lock.\n")
            code, text = cluster.post(refused)
            assert (code, text.split()[0]) == (451, "4.3.0"), text
            time.sleep(max(0.0, 12 - (time.monotonic() - locked_at)))
        finally:
            lock.execute("ROLLBACK")
            lock.close()
        with cluster.db.transaction() as s:
            assert s.scalar(select(func.count()).select_from(Message)) == 1  # not the refused
        sink.start()
        wait_until(lambda: _all_sent(cluster, 2), "the copies sent", timeout=30)
        assert sorted(m.rcpt_tos[0] for m in sink.messages) == sorted(cluster.member_addresses)
        # The sender's MTA tries again: the same post is accepted now.
        assert cluster.post(refused)[0] == 250
        code, seen = cluster.status()
        (node,) = seen["nodes"]
        assert node["running"] and node["pid"] == cluster.nodes[0].pid
        assert node["errors_last_hour"] > 0
    sink.stop()

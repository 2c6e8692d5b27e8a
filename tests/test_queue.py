"""The durable queue: accept, claim, outcomes, recovery and backoff, on real SQLite."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import delete, select

from relay.core import config as relay_config
from relay.core.database import Database
from relay.core.errors import RelayError
from relay.model import (
    AuditEvent,
    Delivery,
    DeliveryStatus,
    FailureReason,
    HoldReason,
    Member,
    MemberState,
    Message,
    MessageBody,
)
from relay.store import delivery_queue, incoming, recipients
from relay.store.spool import PAYLOAD, RAW, Spool, import_folder
from tests.support.relayhome import migrated_database, write_config


@pytest.fixture
def db(tmp_path: Path) -> Database:
    database = migrated_database(tmp_path, relay_config.load(write_config(tmp_path)))
    with database.transaction() as s:
        for n in range(3):
            s.add(Member(address=f"m{n}@example.net", name=f"M{n}"))
        s.add(Member(address="gone@example.net", name="Gone", state=MemberState.REMOVED))
    return database


@pytest.fixture
def spool(db: Database) -> Spool:
    return Spool(db)


def _accept(db: Database, spool: Spool) -> incoming.Accepted:
    return incoming.accept_post(
        db,
        spool,
        incoming.Post(b"raw bytes\r\n", b"payload\r\n", "S", "src@example.org", "F" * 40, "<x@y>"),
        list_domain="example.org",
    )


def test_accept_commits_message_spool_and_one_delivery_per_active_member(db, spool):
    accepted = _accept(db, spool)
    assert accepted.deliveries == 3
    assert spool.read(accepted.message_id, RAW) == b"raw bytes\r\n"
    assert spool.read(accepted.message_id, PAYLOAD) == b"payload\r\n"
    with db.transaction() as s:
        rows = s.execute(select(Delivery)).scalars().all()
        assert sorted(d.recipient for d in rows) == [f"m{n}@example.net" for n in range(3)]
        assert {d.status for d in rows} == {DeliveryStatus.QUEUED}
        assert len({d.copy_message_id for d in rows}) == 3
        assert all(d.copy_message_id.endswith("@example.org>") for d in rows)
        assert s.execute(select(AuditEvent.action)).scalars().all() == ["message.accepted"]


def test_failed_commit_leaves_no_bytes_and_no_rows(db, spool, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(delivery_queue.audit, "record", broken)
    with pytest.raises(RuntimeError):
        _accept(db, spool)
    with db.transaction() as s:
        assert s.execute(select(Message)).first() is None
        assert s.execute(select(MessageBody)).first() is None


def test_claim_leases_due_rows_once_and_recover_returns_them(db, spool):
    _accept(db, spool)  # the deliveries fall due at the real time of the accept
    later = datetime.now(UTC) + timedelta(days=1)
    first = delivery_queue.claim_due(db, later, 10, timedelta(minutes=10))
    assert len(first) == 3
    assert delivery_queue.claim_due(db, later, 10, timedelta(minutes=10)) == []
    assert delivery_queue.recover(db) == 3
    assert sorted(delivery_queue.claim_due(db, later, 10, timedelta(minutes=10))) == sorted(first)


def test_expired_lease_is_claimed_again(db, spool):
    _accept(db, spool)
    now = datetime.now(UTC)
    ids = delivery_queue.claim_due(db, now, 10, timedelta(minutes=10))
    assert delivery_queue.claim_due(db, now + timedelta(minutes=5), 10, timedelta(minutes=10)) == []
    assert sorted(
        delivery_queue.claim_due(db, now + timedelta(minutes=11), 10, timedelta(minutes=10))
    ) == (sorted(ids))


def test_backoff_doubles_and_is_clamped():
    lo, hi = timedelta(minutes=5), timedelta(hours=1)
    assert [delivery_queue.backoff(n, lo, hi).total_seconds() / 60 for n in range(1, 7)] == [
        5,
        10,
        20,
        40,
        60,
        60,
    ]


def test_defer_schedules_retry_then_fails_after_lifetime(db, spool):
    _accept(db, spool)
    now = datetime.now(UTC)
    (did, *_) = delivery_queue.claim_due(db, now, 10, timedelta(minutes=10))
    retry = delivery_queue.Retry(timedelta(minutes=5), timedelta(hours=1), timedelta(days=5))
    outcome = delivery_queue.Attempt(did, "temporary", "451", "try later")
    _, (deferred,) = delivery_queue.record_outcomes(db, [outcome], now=now, retry=retry)
    assert deferred.status == DeliveryStatus.DEFERRED
    assert deferred.next_attempt_at == now + timedelta(minutes=5)
    late = now + timedelta(days=5, seconds=1)
    assert did in delivery_queue.claim_due(db, late, 10, timedelta(minutes=10))
    _, (failed,) = delivery_queue.record_outcomes(db, [outcome], now=late, retry=retry)
    assert (failed.status, failed.failure_reason) == (DeliveryStatus.FAILED, FailureReason.EXPIRED)
    assert "lifetime" in failed.last_reason


def test_each_permanent_failure_records_its_reason_and_a_retry_clears_it(db, spool):
    _accept(db, spool)
    now = datetime.now(UTC)
    a, b, c = sorted(delivery_queue.claim_due(db, now, 10, timedelta(minutes=10)))
    retry = delivery_queue.Retry(timedelta(minutes=5), timedelta(hours=1), timedelta(days=5))
    outcomes = [
        delivery_queue.Attempt(a, "permanent", "550", "5.1.1 No such mailbox"),
        delivery_queue.Attempt(
            b, "permanent", "addr", "unusable address", failure=FailureReason.UNUSABLE_ADDRESS
        ),
        delivery_queue.Attempt.withdrawn(c, to_member=False),
    ]
    delivery_queue.record_outcomes(db, outcomes, now=now, retry=retry)
    with db.transaction() as s:
        failed = [s.get_one(Delivery, i) for i in (a, b, c)]
        assert [(d.status, d.failure_reason, d.last_code) for d in failed] == [
            (DeliveryStatus.FAILED, FailureReason.REJECTED, "550"),
            (DeliveryStatus.FAILED, FailureReason.UNUSABLE_ADDRESS, "addr"),
            (DeliveryStatus.FAILED, FailureReason.GRANT_REVOKED, "cancelled"),
        ]
        retried = delivery_queue.retry(s, a, "cli:test")
        assert (retried.status, retried.failure_reason) == (DeliveryStatus.QUEUED, None)


def test_retry_requeues_held_but_refuses_sent_and_unknown(db, spool):
    _accept(db, spool)
    now = datetime.now(UTC)
    a, b, _ = sorted(delivery_queue.claim_due(db, now, 10, timedelta(minutes=10)))
    retry = delivery_queue.Retry(timedelta(minutes=5), timedelta(hours=1), timedelta(days=5))
    delivery_queue.record_outcomes(
        db, [delivery_queue.Attempt(a, "sent", "250", "ok", ("F" * 40,))], now=now, retry=retry
    )
    with db.transaction() as s:
        delivery_queue.hold(s, s.get_one(Delivery, b), "no usable key", why=HoldReason.NO_KEY)
    with db.transaction() as s:
        held = s.get_one(Delivery, b)
        assert (held.status, held.hold_reason) == (DeliveryStatus.HELD, HoldReason.NO_KEY)
        retried = delivery_queue.retry(s, b, "cli:test")
        assert (retried.status, retried.hold_reason) == (DeliveryStatus.QUEUED, None)
        with pytest.raises(RelayError, match="already sent"):
            delivery_queue.retry(s, a, "cli:test")
        with pytest.raises(RelayError, match="no delivery"):
            delivery_queue.retry(s, 999, "cli:test")


def test_cancel_member_stops_its_pending_deliveries(db, spool):
    _accept(db, spool)
    with db.transaction() as s:
        member = s.execute(select(Member).where(Member.address == "m1@example.net")).scalar_one()
        assert recipients.cancel_member(s, member.id, "cli:test", "removed") == 1
    with db.transaction() as s:
        statuses = {
            d.recipient: (d.status, d.failure_reason) for d in s.execute(select(Delivery)).scalars()
        }
    assert statuses["m1@example.net"] == (DeliveryStatus.FAILED, FailureReason.REMOVED)
    assert statuses["m0@example.net"] == (DeliveryStatus.QUEUED, None)


def test_outcome_for_a_cancelled_delivery_does_not_undo_the_cancel(db, spool):
    _accept(db, spool)
    now = datetime.now(UTC)
    ids = delivery_queue.claim_due(db, now, 10, timedelta(minutes=10))
    with db.transaction() as s:
        member = s.execute(select(Member).where(Member.address == "m0@example.net")).scalar_one()
        recipients.cancel_member(s, member.id, "cli:test", "removed")
        member_delivery = s.execute(
            select(Delivery.id).where(Delivery.member_id == member.id)
        ).scalar_one()
    retry = delivery_queue.Retry(timedelta(minutes=5), timedelta(hours=1), timedelta(days=5))
    sent, _ = delivery_queue.record_outcomes(
        db, [delivery_queue.Attempt(i, "sent", "250", "ok") for i in ids], now=now, retry=retry
    )
    assert sorted(sent) == sorted(i for i in ids if i != member_delivery)
    with db.transaction() as s:
        statuses = {d.recipient: d.status for d in s.execute(select(Delivery)).scalars()}
    assert statuses["m0@example.net"] == DeliveryStatus.FAILED


def test_an_old_spool_folder_moves_into_the_database(db, spool, tmp_path):
    kept = _accept(db, spool).message_id
    with db.transaction() as s:  # as if accepted before the database held the bytes
        s.execute(delete(MessageBody))
    folder = tmp_path / "old-spool"
    for message_id in (kept, "0rphan"):
        (folder / message_id[:2] / message_id).mkdir(parents=True)
        (folder / message_id[:2] / message_id / RAW).write_bytes(b"old raw\r\n")
        (folder / message_id[:2] / message_id / PAYLOAD).write_bytes(b"old payload\r\n")

    assert import_folder(db, spool, folder) == 1
    assert spool.read(kept, RAW) == b"old raw\r\n"
    assert spool.read(kept, PAYLOAD) == b"old payload\r\n"
    assert not (folder / kept[:2] / kept).exists()
    assert (folder / "0r" / "0rphan" / RAW).exists()  # no message of that id: left alone
    assert import_folder(db, spool, folder) == 0

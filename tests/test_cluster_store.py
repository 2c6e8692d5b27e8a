"""The scheduler's lease and the dispatcher's outcomes when the database fails, in process:
a lease passes to another holder only once it ran out, and `relay status` says since when
it is held; a copy whose preparation met a database error goes back to the queue without
counting against it; a notice that cannot be queued does not stop the recording."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.exc import OperationalError

from relay.app import status as relay_status
from relay.model import Delivery, DeliveryStatus
from relay.store import cluster
from tests.support.keys import KeyFactory
from tests.support.mail import pgp_mime_signed, text_entity
from tests.support.relayhome import LIST, RelayThread, distributors, smtp_post
from tests.support.smtpsink import SmtpSink

T0 = datetime(2026, 12, 3, 16, 0, tzinfo=UTC)
TTL = timedelta(seconds=10)


def _report(name: str) -> cluster.Report:
    return cluster.Report(name, "host", os.getpid(), T0, None, None, 0, 0, {})


def test_the_lease_passes_only_once_it_ran_out_and_status_says_since_when(
    tmp_path: Path, keys: KeyFactory, sink: SmtpSink
) -> None:
    home = distributors(tmp_path, keys, sink.port)
    db = home.db
    assert cluster.take(db, cluster.SCHEDULER, "a#1", T0, TTL)
    assert cluster.take(db, cluster.SCHEDULER, "a#1", T0 + timedelta(seconds=5), TTL)
    assert not cluster.take(db, cluster.SCHEDULER, "b#1", T0 + timedelta(seconds=14), TTL)
    later = T0 + timedelta(seconds=16)  # a's renewal ran out at T0 + 15 s
    assert cluster.take(db, cluster.SCHEDULER, "b#1", later, TTL)
    assert cluster.take(db, cluster.SCHEDULER, "b#1", later + timedelta(seconds=5), TTL)
    for name in ("a", "b"):
        cluster.heartbeat(db, _report(name), later + timedelta(seconds=5))
    seen = relay_status.status(db, home.settings, later + timedelta(seconds=6))
    assert (seen.scheduler_leader, seen.scheduler_leader_since) == ("b", later)


def _post(home, keys: KeyFactory, relay: RelayThread, text: str) -> None:  # type: ignore[no-untyped-def]
    src = keys.make("src", "src@example.org")
    data = pgp_mime_signed(
        home.client(src),
        src.fingerprint,
        text_entity(text),
        subject="t",
        sender=src.address,
        to=LIST,
    )
    code, reply = relay.run(smtp_post(relay.port, data))
    assert code == 250, reply


def _copies(home) -> list[Delivery]:  # type: ignore[no-untyped-def]
    with home.db.transaction() as s:
        return list(s.execute(select(Delivery).order_by(Delivery.id)).scalars())


def test_a_database_error_while_preparing_queues_the_copy_again_uncounted(
    tmp_path: Path, keys: KeyFactory, sink: SmtpSink
) -> None:
    home = distributors(tmp_path, keys, sink.port, members=1)
    with RelayThread(home.settings, dispatch=False) as relay:
        _post(home, keys, relay, "Embargoed.\n")
        dispatcher = relay.relay.dispatcher
        payloads, failed = dispatcher._payloads, []
        read = payloads.get

        def flaky(message_id: str) -> bytes:
            if not failed:
                failed.append(message_id)
                raise OperationalError("SELECT", {}, Exception("server closed the connection"))
            return read(message_id)

        payloads.get = flaky  # type: ignore[method-assign]
        # The first attempt meets the error and is queued again at once; the same pass
        # claims it again and sends it.
        relay.run(dispatcher.run_once())
    assert failed
    (copy,) = _copies(home)
    assert (copy.status, copy.attempts, copy.errors) == (DeliveryStatus.SENT, 1, 0)
    assert len(sink.messages) == 1


def test_a_notice_that_cannot_be_queued_does_not_stop_the_recording(
    tmp_path: Path, keys: KeyFactory, sink: SmtpSink
) -> None:
    home = distributors(tmp_path, keys, sink.port, members=1)
    with RelayThread(home.settings, dispatch=False) as relay:
        dispatcher = relay.relay.dispatcher

        def no_database(*args: object, **kwargs: object) -> None:
            raise OperationalError("INSERT", {}, Exception("database is locked"))

        dispatcher._notify = no_database  # type: ignore[method-assign]
        sink.reply_next("550 5.1.1 no such user")
        _post(home, keys, relay, "First.\n")
        relay.run(dispatcher.run_once())  # the failure's notice to the contact fails
        _post(home, keys, relay, "Second.\n")
        relay.run(dispatcher.run_once())
    first, second = _copies(home)
    assert (first.status, second.status) == (DeliveryStatus.FAILED, DeliveryStatus.SENT)

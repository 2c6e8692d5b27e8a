"""The dispatcher claims its next batch while copies of the last are still queued (so the
crypto workers never wait for a claim between batches), and at the end of a fan-out it does
not claim again at every copy sent."""

from __future__ import annotations

from pathlib import Path

import pytest

from relay.core import config as relay_config
from relay.runners import dispatcher
from relay.store import delivery_queue
from tests.support.keys import KeyFactory
from tests.support.mail import pgp_mime_signed, text_entity
from tests.support.relayhome import LIST, RelayThread, distributors
from tests.support.relayhome import smtp_post as post
from tests.support.smtpsink import SmtpSink

MEMBERS = 20
BATCH = 8


def test_the_next_batch_is_claimed_before_the_queue_runs_dry(
    tmp_path: Path, keys: KeyFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(dispatcher, "CLAIM_BATCH", BATCH)
    monkeypatch.setattr(dispatcher, "REFILL_AT", BATCH // 2)
    claims: list[tuple[int, int]] = []  # (copies the sink had at the claim, copies claimed)
    claim_due = delivery_queue.claim_due

    with SmtpSink() as sink:

        def counted(*args: object, **kwargs: object) -> list[int]:
            had = len(sink.messages)
            ids = claim_due(*args, **kwargs)  # type: ignore[arg-type]
            claims.append((had, len(ids)))
            return ids

        monkeypatch.setattr(delivery_queue, "claim_due", counted)
        home = distributors(tmp_path, keys, sink.port, members=MEMBERS)
        src = keys.make("src", "src@example.org")
        message = pgp_mime_signed(
            home.client(src),
            src.fingerprint,
            text_entity("The embargoed text.\n"),
            subject="[EMBARGOED] CVE-2026-4343: refill",
            sender=src.address,
            to=LIST,
        )
        # No claims on the poll's clock: those counted are the ones the copies set off.
        config = home.config_path.read_text().replace(
            'poll_interval = "0.2s"', 'poll_interval = "1h"'
        )
        home.config_path.write_text(config)
        with RelayThread(relay_config.load(home.config_path)) as relay:
            claims.clear()  # those of the start, before the post
            assert relay.run(post(relay.port, message))[0] == 250
            received = sink.wait_for(MEMBERS, timeout=60)
        assert sorted(r for m in received for r in m.rcpt_tos) == sorted(
            f"security@distro{n}.example" for n in range(MEMBERS)
        )
    taken = [count for _, count in claims if count]
    assert sum(taken) == MEMBERS and taken[0] == BATCH
    # Each batch after the first was claimed while copies claimed before it were still to
    # be sent (how many depends on the machine's speed: the claim runs beside the sending).
    claimed = 0
    for had, count in claims:
        if count and claimed:
            assert had < claimed, claims
        claimed += count
    # After the short claim that took the last copies, none: no claim per copy sent.
    assert claims[-1][1] == MEMBERS - 2 * BATCH, claims

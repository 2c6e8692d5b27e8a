"""Who did it, in the audit trail: a signed post's rows name its key as `key:<fingerprint>`,
like every other actor with a kind in front (`cli:<user>`, `relay`). Rows written before
that, with a bare fingerprint, are shown the same way: no migration rewrites the trail."""

from __future__ import annotations

import json
import re
from pathlib import Path

from click.testing import CliRunner
from sqlalchemy import select

from relay.cli.root import cli
from relay.model import AuditEvent
from relay.store import audit
from tests.support.keys import KeyFactory
from tests.support.mail import pgp_mime_signed, text_entity
from tests.support.relayhome import LIST, RelayThread, distributors, smtp_post
from tests.support.smtpsink import SmtpSink

_KINDS = re.compile(r"^(?:cli:.+|relay|key:[0-9A-F]{40,64})$")


def test_a_signed_posts_rows_name_its_key_and_old_bare_rows_read_the_same(
    tmp_path: Path, keys: KeyFactory, sink: SmtpSink
) -> None:
    home = distributors(tmp_path, keys, sink.port, members=1)
    src = keys.make("src", "src@example.org")
    post = pgp_mime_signed(
        home.client(src),
        src.fingerprint,
        text_entity("X-Advisory: CVE-2026-7400\nX-Embargo-Until: +10d\n\nThe flaw.\n"),
        subject="(outer)",
        sender=src.address,
        to=LIST,
    )
    with RelayThread(home.settings, dispatch=False) as relay:
        assert relay.run(smtp_post(relay.port, post))[0] == 250
    with home.db.transaction() as s:
        rows = s.execute(select(AuditEvent).order_by(AuditEvent.id)).scalars().all()
        by_action = {r.action: r.actor for r in rows}
        assert by_action["message.accepted"] == f"key:{src.fingerprint}"
        assert by_action["advisory.created"] == f"key:{src.fingerprint}"
        assert all(_KINDS.match(r.actor) for r in rows), [r.actor for r in rows]
        # A row as a relay before `key:` wrote it.
        s.add(AuditEvent(actor=src.fingerprint, action="message.accepted", subject="0" * 16))

    result = CliRunner().invoke(cli, ["--config", str(home.config_path), "audit", "--json"])
    assert result.exit_code == 0, result.output
    shown = json.loads(result.stdout)
    accepted = [r["actor"] for r in shown if r["action"] == "message.accepted"]
    assert accepted == [f"key:{src.fingerprint}"] * 2
    assert all(_KINDS.match(r["actor"]) for r in shown)


def test_only_a_bare_fingerprint_is_read_as_a_key() -> None:
    fpr = "0123456789ABCDEF0123456789ABCDEF01234567"
    assert audit.shown_actor(fpr) == f"key:{fpr}"
    assert audit.shown_actor(f"key:{fpr}") == f"key:{fpr}"
    assert audit.shown_actor("relay") == "relay"
    assert audit.shown_actor("cli:deadbeefdeadbeefdeadbeefdeadbeefdeadbeef") == (
        "cli:deadbeefdeadbeefdeadbeefdeadbeefdeadbeef"
    )
    assert audit.shown_actor(fpr[:-1]) == fpr[:-1]  # not a fingerprint's length

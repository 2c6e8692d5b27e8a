"""Embargoed text at rest: a database file or dump holds none of it without the keyring.

A signed advisory goes through a real relay (SMTP in, copies out to a sink); its subject
and body carry a marker. Then the SQLite file (with its WAL) or a `pg_dump` of the
PostgreSQL database is searched for the marker, and for the marker in base64 and UTF-16,
the two dresses a careless store would put it in. The relay itself still reads it all.
"""

from __future__ import annotations

import base64
import subprocess
from pathlib import Path

import pytest
from sqlalchemy import select

from relay.model import Advisory, Message
from tests.support import databases
from tests.support.keys import KeyFactory
from tests.support.mail import pgp_mime_signed, text_entity
from tests.support.relayhome import LIST, RelayHome, RelayThread, distributors
from tests.support.relayhome import smtp_post as _post
from tests.support.smtpsink import SmtpSink

MARKER = "ZQX-EMBARGO-MARKER-4711"
SUBJECT = f"[EMBARGOED] CVE-2026-77777: {MARKER} in the kubelet"
BODY = f"EMBARGOED.\n\nThe kubelet mounts {MARKER} volumes for any pod.\n"


def _dresses() -> list[bytes]:
    plain = MARKER.encode()
    return [plain, base64.b64encode(plain)[:16], MARKER.encode("utf-16-le")]


def _accepted_and_sent(tmp_path: Path, keys: KeyFactory, sink: SmtpSink) -> RelayHome:
    home = distributors(tmp_path, keys, sink.port, members=2)
    src = keys.make("src", "src@example.org")
    post = pgp_mime_signed(
        home.client(src),
        src.fingerprint,
        text_entity(BODY, subject=SUBJECT),
        subject=SUBJECT,
        sender=src.address,
        to=LIST,
    )
    with RelayThread(home.settings) as relay:
        code, reply = relay.run(_post(relay.port, post))
        assert code == 250, reply
        sink.wait_for(2, timeout=60)
    with home.db.transaction() as s:  # the relay reads what it sealed
        (subject,) = s.execute(select(Message.subject)).scalars()
        assert MARKER in subject
        assert any(MARKER in (a.title or "") for a in s.execute(select(Advisory)).scalars())
        payload = home.spool.read(s.execute(select(Message.id)).scalar_one(), "payload", s)
        assert MARKER.encode() in payload
    return home


@databases.only_sqlite
def test_the_sqlite_file_holds_no_embargoed_text(
    tmp_path: Path, keys: KeyFactory, sink: SmtpSink
) -> None:
    home = _accepted_and_sent(tmp_path, keys, sink)
    home.db.dispose()
    stored = b"".join(p.read_bytes() for p in (tmp_path / "state").glob("relay.db*"))
    assert len(stored) > 10_000
    for dress in _dresses():
        assert dress not in stored


@databases.only_postgresql
def test_a_pg_dump_holds_no_embargoed_text(
    tmp_path: Path, keys: KeyFactory, sink: SmtpSink
) -> None:
    home = _accepted_and_sent(tmp_path, keys, sink)
    name = databases.name_of(home.settings.storage.database_url)
    assert name is not None
    dump = subprocess.run(
        ["pg_dump", "-h", "127.0.0.1", "-U", "postgres", name],
        capture_output=True,
        check=True,
        timeout=60,
    ).stdout
    assert b"message_bodies" in dump and len(dump) > 10_000
    for dress in _dresses():
        assert dress not in dump


def test_a_database_opened_without_the_list_key_shows_no_text(
    tmp_path: Path, keys: KeyFactory, sink: SmtpSink
) -> None:
    from relay.core.database import Database

    home = _accepted_and_sent(tmp_path, keys, sink)
    stranger = Database(home.settings.storage.database_url)
    try:
        with (
            pytest.raises(Exception, match="data key is not loaded"),
            stranger.transaction() as s,
        ):
            s.execute(select(Message.subject)).all()
    finally:
        stranger.dispose()

"""The audit trail's hash chain: every row linked at commit, on SQLite and PostgreSQL, in
one transaction or many at once; `relay audit verify` finds the first row edited, removed
or added in the database directly; migration 0014 chains the rows already there."""

from __future__ import annotations

import itertools
import secrets
import threading
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import select, text

from relay.app.audit_chain import verify_chain
from relay.core.database import MIGRATIONS_DIR, Database
from relay.core.sealing import SealedJSON, Sealer, SealingError, attach, new_key
from relay.model import AuditChainHead, AuditEvent
from relay.store import audit
from relay.store.audit_chain import GENESIS
from tests.support import databases
from tests.support.cli import CliRelay, set_up
from tests.support.keys import KeyFactory

MEMBER = "chain-a@distro-a.example"


@pytest.fixture
def relay(tmp_path: Path, keys: KeyFactory) -> Iterator[CliRelay]:
    r = set_up(tmp_path, keys, [("chain-a", MEMBER, "Distro A")])
    r("advisory", "create", "CVE-2026-7001", "--title", "A first")
    r("advisory", "create", "CVE-2026-7002", "--title", "A second")
    r("member", "suspend", MEMBER, "--reason", "on holiday")
    yield r
    r.db.dispose()


def _ids(db: Database) -> list[int]:
    with db.transaction() as s:
        return list(s.scalars(select(AuditEvent.id).order_by(AuditEvent.seq)))


def _sql(db: Database, statement: str, **params: object) -> None:
    with db.engine.begin() as conn:
        conn.execute(text(statement), params)


def test_every_row_is_linked_and_the_chain_verifies(relay: CliRelay) -> None:
    with relay.db.transaction() as s:
        rows = list(s.scalars(select(AuditEvent).order_by(AuditEvent.id)))
        head = s.get(AuditChainHead, 1)
    assert len(rows) >= 4
    assert [r.seq for r in rows] == list(range(1, len(rows) + 1))
    assert rows[0].prev_hash == GENESIS
    assert all(b.prev_hash == a.row_hash for a, b in itertools.pairwise(rows))
    assert head is not None and (head.seq, head.row_hash) == (len(rows), rows[-1].row_hash)
    out = relay("audit", "verify").stdout
    assert f"audit chain intact: {len(rows)} row(s)" in out
    assert f"head: {rows[-1].row_hash}" in out
    check = relay.json("audit", "verify")
    assert check["ok"] is True and check["first_bad"] is None
    # `relay audit` with no subcommand still lists the trail.
    assert "advisory.created" in relay("audit", "--limit", "5").stdout


@pytest.mark.parametrize(
    ("edit", "reason"),
    [
        ("UPDATE audit_events SET actor = 'cli:mallory' WHERE id = :id", "does not match"),
        ("UPDATE audit_events SET subject = 'CVE-2026-9999' WHERE id = :id", "does not match"),
        ("UPDATE audit_events SET at = at - INTERVAL '1 day' WHERE id = :id", "does not match"),
        ("UPDATE audit_events SET action = 'advisory.cancelled' WHERE id = :id", "does not"),
    ],
)
def test_a_row_edited_in_the_database_is_named(relay: CliRelay, edit: str, reason: str) -> None:
    target = _ids(relay.db)[1]
    if relay.db.engine.dialect.name == "sqlite":
        edit = edit.replace("at - INTERVAL '1 day'", "'2020-01-01 00:00:00.000000'")
    _sql(relay.db, edit, id=target)
    out = relay("audit", "verify", code=1).stdout
    assert f"audit chain broken at audit row {target}: " in out and reason in out
    assert relay.json("audit", "verify", code=1)["first_bad"] == target


def test_a_detail_copied_from_another_row_is_named(relay: CliRelay) -> None:
    first, second = _ids(relay.db)[1:3]
    _sql(
        relay.db,
        "UPDATE audit_events SET detail = (SELECT detail FROM audit_events WHERE id = :a)"
        " WHERE id = :b",
        a=first,
        b=second,
    )
    out = relay("audit", "verify", code=1).stdout
    assert f"at audit row {second}: " in out


def test_a_row_rehashed_by_hand_still_breaks_the_next_link(relay: CliRelay) -> None:
    """Whoever edits a row and writes a new hash for it must rewrite every row after it."""
    ids = _ids(relay.db)
    _sql(
        relay.db,
        "UPDATE audit_events SET actor = 'cli:mallory', row_hash = :h WHERE id = :id",
        h="f" * 64,
        id=ids[1],
    )
    out = relay("audit", "verify", code=1).stdout
    assert f"at audit row {ids[1]}: its content does not match" in out


def test_a_removed_row_breaks_the_chain_at_the_next(relay: CliRelay) -> None:
    ids = _ids(relay.db)
    _sql(relay.db, "DELETE FROM audit_events WHERE id = :id", id=ids[1])
    out = relay("audit", "verify", code=1).stdout
    assert f"at audit row {ids[2]}: out of sequence (row number 2 is missing)" in out


def test_rows_cut_off_the_end_are_reported(relay: CliRelay) -> None:
    ids = _ids(relay.db)
    _sql(relay.db, "DELETE FROM audit_events WHERE id >= :id", id=ids[-2])
    out = relay("audit", "verify", code=1).stdout
    assert "audit chain broken at the end" in out and "2 row(s) missing at the end" in out


def test_a_row_inserted_in_the_database_is_named(relay: CliRelay) -> None:
    _sql(
        relay.db,
        "INSERT INTO audit_events (at, actor, action, subject)"
        " VALUES ('2026-12-01 10:00:00', 'cli:mallory', 'advisory.lifted', 'CVE-2026-7001')",
    )
    with relay.db.transaction() as s:
        forged = s.scalar(select(AuditEvent.id).where(AuditEvent.actor == "cli:mallory"))
    out = relay("audit", "verify", code=1).stdout
    assert f"at audit row {forged}: it is not linked into the chain" in out


def test_the_chain_goes_on_after_a_rolled_back_transaction(relay: CliRelay) -> None:
    with pytest.raises(RuntimeError), relay.db.transaction() as s:
        audit.record(s, "cli:test", "test.rolled_back", "x")
        s.flush()
        raise RuntimeError("abandoned")
    with relay.db.transaction() as s, s.begin_nested() as savepoint:
        audit.record(s, "cli:test", "test.savepoint", "x")
        s.flush()
        savepoint.rollback()
    with relay.db.transaction() as s:
        audit.record(s, "cli:test", "test.kept", "x")
    check = verify_chain(relay.db)
    assert check.ok, check
    with relay.db.transaction() as s:
        actions = list(s.scalars(select(AuditEvent.action)))
    assert "test.kept" in actions and "test.rolled_back" not in actions
    assert "test.savepoint" not in actions


def test_transactions_at_once_make_one_chain(relay: CliRelay) -> None:
    """Eight writers, each its own connection (a node each, on PostgreSQL): every row
    gets its own place, none is skipped, and the chain verifies."""
    before = len(_ids(relay.db))
    errors: list[BaseException] = []

    def write(n: int) -> None:
        db = Database(relay.db.url)
        attach(db.engine, _sealer_of(relay.db))
        try:
            for i in range(10):
                with db.transaction() as s:
                    audit.record(s, f"cli:w{n}", "test.concurrent", f"w{n}-{i}", n=i)
                    audit.record(s, f"cli:w{n}", "test.concurrent", f"w{n}-{i}b")
        except BaseException as exc:  # reported below
            errors.append(exc)
        finally:
            db.dispose()

    threads = [threading.Thread(target=write, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    check = verify_chain(relay.db)
    assert check.ok, check
    assert check.rows == before + 160


def _sealer_of(db: Database) -> Sealer:
    from relay.core.sealing import sealer_for

    return sealer_for(db.engine.dialect)


# Migration 0014


def _config(db: Database) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["engine"] = db.engine
    return config


@pytest.fixture
def empty_db(tmp_path: Path) -> Iterator[Database]:
    if databases.on_postgresql():
        name = f"{databases.PREFIX}chain{secrets.token_hex(6)}"
        try:
            databases.create(name)
        except psycopg.OperationalError as exc:  # pragma: no cover - the machine runs it
            pytest.skip(f"PostgreSQL is not reachable: {exc}")
        db = Database(databases.url_of(name))
    else:
        db = Database(f"sqlite:///{tmp_path / 'relay.db'}")
    yield db
    db.dispose()


def _old_rows(db: Database, sealer: Sealer | None) -> None:
    """Rows as 0013 kept them: sealed details, one plain, one without detail."""
    detail = SealedJSON("audit_events.detail")
    with db.engine.begin() as conn:
        for n, value in enumerate([{"old": None, "new": "2026-12-24T10:00:00+00:00"}, None]):
            stored = None
            if value is not None and sealer is not None:
                stored = detail.process_bind_param(value, conn.dialect)
            conn.execute(
                text(
                    "INSERT INTO audit_events (at, actor, action, subject, detail)"
                    " VALUES (:at, 'cli:old', 'advisory.scheduled', :s, :d)"
                ),
                {"at": f"2026-11-2{n} 10:00:00.123456", "s": f"CVE-2026-{n}", "d": stored},
            )
        conn.execute(
            text(
                "INSERT INTO audit_events (at, actor, action, subject, detail)"
                " VALUES ('2026-11-25 10:00:00', 'relay', 'plain', 'x', :d)"
            ),
            {"d": '{"reason": "written before sealing"}'},
        )


def test_0014_chains_the_rows_already_there(empty_db: Database) -> None:
    config = _config(empty_db)
    command.upgrade(config, "0013")
    sealer = Sealer()
    sealer.add(*new_key())
    attach(empty_db.engine, sealer)
    _old_rows(empty_db, sealer)
    command.upgrade(config, "0014")
    check = verify_chain(empty_db)
    assert check.ok and check.rows == 3, check
    with empty_db.transaction() as s:  # the chain goes on from the migrated rows
        audit.record(s, "cli:new", "test.after", "x")
    check = verify_chain(empty_db)
    assert check.ok and check.rows == 4, check
    command.downgrade(config, "0013")
    command.upgrade(config, "head")
    assert verify_chain(empty_db).ok


def test_0014_without_the_data_keys_says_what_to_do(empty_db: Database) -> None:
    config = _config(empty_db)
    command.upgrade(config, "0013")
    sealer = Sealer()
    sealer.add(*new_key())
    attach(empty_db.engine, sealer)
    _old_rows(empty_db, sealer)
    empty_db.dispose()
    fresh = Database(empty_db.url)  # a new engine: no sealer attached
    try:
        with pytest.raises(SealingError, match=r"audit row \d+ cannot be chained.*relay init"):
            command.upgrade(_config(fresh), "0014")
        assert not fresh.is_current()
    finally:
        fresh.dispose()

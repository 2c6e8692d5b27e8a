"""The Alembic migrations: they build the schema the models describe, on SQLite and on
PostgreSQL (a throwaway database per test on the test server), and carry data across."""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, text
from sqlalchemy.exc import IntegrityError

from relay.core.database import MIGRATIONS_DIR, Database
from relay.model import Base
from tests.support import databases


def _config(db: Database) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["engine"] = db.engine
    return config


@pytest.fixture
def sqlite(tmp_path: Path) -> Iterator[Database]:
    db = Database(f"sqlite:///{tmp_path / 'relay.db'}")
    yield db
    db.dispose()


@pytest.fixture
def postgres() -> Iterator[Database]:
    """An empty database on the test server (tests/support/databases.py), dropped after the test."""
    name = f"{databases.PREFIX}mig{secrets.token_hex(6)}"
    try:
        databases.create(name)
    except psycopg.OperationalError as exc:  # pragma: no cover - the machine runs PostgreSQL
        pytest.skip(f"PostgreSQL is not reachable: {exc}")
    db = Database(databases.url_of(name))
    yield db
    db.dispose()


def _differences(db: Database) -> list:
    with db.engine.connect() as conn:
        return compare_metadata(MigrationContext.configure(conn), Base.metadata)


@pytest.mark.parametrize(
    "backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def test_the_migrations_build_the_schema_of_the_models(
    backend: str, request: pytest.FixtureRequest
) -> None:
    db: Database = request.getfixturevalue(backend)
    db.upgrade()
    assert db.is_current()
    assert _differences(db) == []


def _advisory_foreign_keys(db: Database) -> list[list[str]]:
    return [
        fk["constrained_columns"]
        for fk in inspect(db.engine).get_foreign_keys("incidents")
        if fk["referred_table"] == "advisories"
    ]


def _delivery_rows(db: Database, count: int) -> None:
    with db.engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO messages (id, kind, received_at, mail_from, subject, size, sha256)"
                " VALUES ('m1', 'post', '2026-11-24 10:00:00', '', 's', 1, 'x')"
            )
        )
        for n in range(count):
            conn.execute(
                text(
                    "INSERT INTO deliveries (message_id, recipient, plaintext_allowed, status,"
                    " attempts, created_at, updated_at, next_attempt_at, copy_message_id)"
                    " VALUES ('m1', :rcpt, false, 'sent', 1, '2026-11-24 10:00:00',"
                    " '2026-11-24 10:00:00', '2026-11-24 10:00:00', :copy)"
                ),
                {"rcpt": f"m{n}@example.net", "copy": f"<c{n}@example.org>"},
            )


@pytest.mark.parametrize(
    "backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def test_0007_gives_every_existing_delivery_its_own_reference(
    backend: str, request: pytest.FixtureRequest
) -> None:
    db: Database = request.getfixturevalue(backend)
    config = _config(db)
    command.upgrade(config, "0006")
    _delivery_rows(db, 5)
    command.upgrade(config, "0007")
    with db.engine.connect() as conn:
        references = conn.execute(text("SELECT reference FROM deliveries")).scalars().all()
    assert len(references) == 5 and len(set(references)) == 5
    assert all(
        re.fullmatch(r"ER-[0-9A-HJKMNP-TV-Z]{4}(-[0-9A-HJKMNP-TV-Z]{4}){2}", r) for r in references
    )
    with pytest.raises(IntegrityError), db.engine.begin() as conn:  # unique
        conn.execute(text("UPDATE deliveries SET reference = :r"), {"r": references[0]})
    with pytest.raises(IntegrityError), db.engine.begin() as conn:  # not null
        conn.execute(text("UPDATE deliveries SET reference = NULL"))

    assert "held_for" in {c["name"] for c in inspect(db.engine).get_columns("deliveries")}
    # A refused post's incident may name an advisory that was never created.
    assert _advisory_foreign_keys(db) == []
    incident = (
        "INSERT INTO incidents (at, advisory_id, sender, recipients, kind, recorded_by)"
        " VALUES ('2026-11-24 10:00:00', 'CVE-NEVER-0001', 's@x', '[]', 'external-cc', 'relay')"
    )
    with db.engine.begin() as conn:
        conn.execute(text(incident))
        conn.execute(text("DELETE FROM incidents"))

    command.downgrade(config, "0006")
    columns = {c["name"] for c in inspect(db.engine).get_columns("deliveries")}
    assert "reference" not in columns and "held_for" not in columns
    assert "copy_message_id" in columns
    assert _advisory_foreign_keys(db) == [["advisory_id"]]
    command.upgrade(config, "head")
    assert db.is_current()


@pytest.mark.parametrize(
    "backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def test_0009_turns_the_words_of_each_hold_into_its_reason(
    backend: str, request: pytest.FixtureRequest
) -> None:
    db: Database = request.getfixturevalue(backend)
    config = _config(db)
    command.upgrade(config, "0006")
    _delivery_rows(db, 8)  # in the 0006 shape; 0007 gives them their references
    command.upgrade(config, "0008")
    held = [
        ("moderation", None),
        ("embargo", "<x> may not receive CVE-1 before ..."),
        ("held", "no usable key: key 1234: key has expired"),
        ("held", "encryption failed: gpg said no"),
        ("held", "copy not built: a header field is too long"),
        ("held", "the forwarding check failed (KeyError); held to fail closed"),
        ("held", "something said long ago"),
        ("held", "sent since"),
    ]
    with db.engine.begin() as conn:
        ids = conn.execute(text("SELECT id FROM deliveries ORDER BY id")).scalars().all()
        for delivery_id, (code, reason) in zip(ids, held, strict=True):
            conn.execute(
                text(
                    "UPDATE deliveries SET status = 'held', last_code = :c, last_reason = :r"
                    " WHERE id = :i"
                ),
                {"c": code, "r": reason, "i": delivery_id},
            )
        conn.execute(text("UPDATE deliveries SET status = 'sent' WHERE id = :i"), {"i": ids[-1]})
    command.upgrade(config, "0009")
    with db.engine.connect() as conn:
        reasons = conn.execute(text("SELECT hold_reason FROM deliveries ORDER BY id")).scalars()
        assert list(reasons) == [
            "moderation",
            "embargo",
            "no-key",
            "encryption-failed",
            "copy-not-built",
            "gate-failed",
            "unknown",  # held, for words no rule knows
            None,  # not held: no reason
        ]
    command.downgrade(config, "0008")
    assert "hold_reason" not in {c["name"] for c in inspect(db.engine).get_columns("deliveries")}
    command.upgrade(config, "head")
    assert db.is_current()


@pytest.mark.parametrize(
    "backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def test_0010_turns_the_words_of_each_failure_into_its_reason(
    backend: str, request: pytest.FixtureRequest
) -> None:
    db: Database = request.getfixturevalue(backend)
    config = _config(db)
    command.upgrade(config, "0006")
    _delivery_rows(db, 10)  # in the 0006 shape, no member: a grant holder's or a notice
    command.upgrade(config, "0009")
    failed = [
        ("451", "queue lifetime exceeded; last error: try later", False),
        ("rejected", "off topic", True),
        ("cancelled", "member removed: left the list", True),
        ("cancelled", "recipient holds no accepted grant", False),
        ("addr", "unusable address 'b\\r\\n@x'", True),
        ("550", "5.1.1 No such mailbox", True),
        ("554", "5.7.1 Refused", False),
        ("conn", "something said long ago", True),
        (None, None, False),
        ("250", "sent since", True),
    ]
    with db.engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO members (address, name, state, created_at, updated_at) VALUES"
                " ('m@x.example', 'M', 'active', '2026-11-24 10:00:00', '2026-11-24 10:00:00')"
            )
        )
        member_id = conn.execute(text("SELECT id FROM members")).scalar_one()
        ids = conn.execute(text("SELECT id FROM deliveries ORDER BY id")).scalars().all()
        for delivery_id, (code, reason, to_member) in zip(ids, failed, strict=True):
            conn.execute(
                text(
                    "UPDATE deliveries SET status = 'failed', last_code = :c, last_reason = :r,"
                    " member_id = :m WHERE id = :i"
                ),
                {"c": code, "r": reason, "m": member_id if to_member else None, "i": delivery_id},
            )
        conn.execute(text("UPDATE deliveries SET status = 'sent' WHERE id = :i"), {"i": ids[-1]})
    command.upgrade(config, "0010")
    with db.engine.connect() as conn:
        rows = conn.execute(
            text("SELECT failure_reason, last_code, last_reason FROM deliveries ORDER BY id")
        ).all()
    assert [r.failure_reason for r in rows] == [
        "expired",
        "moderator-rejected",
        "removed",  # a member's copy, cancelled
        "grant-revoked",  # a copy to someone else, cancelled
        "unusable-address",
        "rejected",
        "rejected",
        "unknown",  # failed, for words no rule knows
        "unknown",
        None,  # not failed: no reason
    ]
    assert [(r.last_code, r.last_reason) for r in rows] == [(c, r) for c, r, _ in failed]
    command.downgrade(config, "0009")
    columns = {c["name"] for c in inspect(db.engine).get_columns("deliveries")}
    assert "failure_reason" not in columns and "last_code" in columns
    command.upgrade(config, "head")
    assert db.is_current()


@pytest.mark.parametrize(
    "backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def test_0012_gives_every_existing_delivery_its_own_bounce_token(
    backend: str, request: pytest.FixtureRequest
) -> None:
    db: Database = request.getfixturevalue(backend)
    config = _config(db)
    command.upgrade(config, "0006")
    _delivery_rows(db, 5)  # in the 0006 shape; 0007 gives them their references
    command.upgrade(config, "0011")
    command.upgrade(config, "0012")
    with db.engine.connect() as conn:
        tokens = conn.execute(text("SELECT bounce_token FROM deliveries")).scalars().all()
    assert len(tokens) == 5 and len(set(tokens)) == 5
    assert all(re.fullmatch(r"[a-z2-7]{16}", t) for t in tokens)
    with pytest.raises(IntegrityError), db.engine.begin() as conn:  # unique
        conn.execute(text("UPDATE deliveries SET bounce_token = :t"), {"t": tokens[0]})
    with pytest.raises(IntegrityError), db.engine.begin() as conn:  # not null
        conn.execute(text("UPDATE deliveries SET bounce_token = NULL"))
    assert "bouncing_since" in {c["name"] for c in inspect(db.engine).get_columns("members")}
    assert "bounces" in inspect(db.engine).get_table_names()

    command.downgrade(config, "0011")
    assert "bounce_token" not in {c["name"] for c in inspect(db.engine).get_columns("deliveries")}
    assert "bouncing_since" not in {c["name"] for c in inspect(db.engine).get_columns("members")}
    assert "bounces" not in inspect(db.engine).get_table_names()
    command.upgrade(config, "head")
    assert db.is_current()


_ADMIN_TABLES = {"admins", "admin_tokens", "web_sessions", "login_failures"}


@pytest.mark.parametrize(
    "backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def test_0013_adds_the_admin_tables_and_takes_them_away(
    backend: str, request: pytest.FixtureRequest
) -> None:
    db: Database = request.getfixturevalue(backend)
    config = _config(db)
    command.upgrade(config, "0013")
    assert set(inspect(db.engine).get_table_names()) >= _ADMIN_TABLES
    add = (
        "INSERT INTO admins (name, password_hash, created_at, created_by)"
        " VALUES ('alice', '$argon2id$x', '2026-12-02 10:00:00', 'cli:root')"
    )
    with db.engine.begin() as conn:
        conn.execute(text(add))
    with pytest.raises(IntegrityError), db.engine.begin() as conn:  # one row per name
        conn.execute(text(add))
    command.downgrade(config, "0012")
    assert not _ADMIN_TABLES & set(inspect(db.engine).get_table_names())
    command.upgrade(config, "head")
    assert db.is_current()

"""The database a test's relay uses: SQLite in its folder, or a throwaway PostgreSQL database.

`RELAY_TEST_DATABASE=postgresql` runs the suite on PostgreSQL (`make test` runs it both
ways): each relay folder gets its own database on the server of `RELAY_TEST_POSTGRES`
(default 127.0.0.1:5432, user postgres), named after the folder, empty when the config is
written; a template's set-up is cloned into it with `CREATE DATABASE ... TEMPLATE` (tens of
milliseconds). Every database made during a test is dropped after it, and every one left at
the end of the session.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import psycopg
import pytest

SQLITE = "sqlite"
POSTGRESQL = "postgresql"
BACKEND = os.environ.get("RELAY_TEST_DATABASE", SQLITE)
SERVER = os.environ.get("RELAY_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432")
PREFIX = f"relay_t{os.getpid()}_"

_made: list[str] = []

only_sqlite = pytest.mark.skipif(BACKEND != SQLITE, reason="about the SQLite file itself")
only_postgresql = pytest.mark.skipif(BACKEND != POSTGRESQL, reason="needs PostgreSQL")


def on_postgresql() -> bool:
    return BACKEND == POSTGRESQL


def url_of(name: str) -> str:
    return f"{SERVER}/{name}"


def name_of(url: str) -> str | None:
    """The PostgreSQL database this test session made for `url`, else None."""
    prefix = f"{SERVER}/"
    if not url.startswith(prefix):
        return None
    name = url.removeprefix(prefix)
    return name if name.startswith(PREFIX) else None


def _admin() -> psycopg.Connection:
    dsn = SERVER.replace("postgresql+psycopg://", "postgresql://") + "/postgres"
    return psycopg.connect(dsn, autocommit=True)


def database_for(root: Path) -> str:
    """The `database_url` for a relay whose config lives in `root`: a relative SQLite file,
    or a new, empty PostgreSQL database."""
    if BACKEND == SQLITE:
        return "sqlite:///state/relay.db"
    name = PREFIX + hashlib.sha1(str(root.resolve()).encode()).hexdigest()[:16]
    create(name)
    return url_of(name)


def create(name: str, template: str = "template0") -> None:
    with _admin() as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
    if name not in _made:
        _made.append(name)


def clone(template: str, name: str) -> None:
    """`name` becomes a copy of `template` (whose connections must be closed)."""
    create(name, template)


def drop_made(keep: tuple[str, ...] = ()) -> None:
    """Drop the databases made so far, except `keep` (the session's templates)."""
    if not _made:
        return
    with _admin() as conn:
        for name in [n for n in _made if n not in keep]:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            _made.remove(name)

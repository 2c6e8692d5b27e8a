"""Database engine and transactions: the only module that opens sessions.

SQLite runs in WAL mode with `synchronous=FULL`, so a committed transaction
survives power loss; that commit is what allows the SMTP edge to say `250`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import (
    Any,
    cast,
)

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import CursorResult, Result
from sqlalchemy.orm import Session, sessionmaker

# Package data: the migrations travel inside the package, so a wheel can run them.
MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.close()


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        path = url.removeprefix("sqlite:///")
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return create_engine(url, pool_pre_ping=True)


def sqlite_foreign_keys_off(connection: Connection) -> None:
    """For a migration that rebuilds a referenced SQLite table: foreign keys off.

    The pragma is ignored inside a transaction, and an earlier step of the same run may
    have opened one (pysqlite begins one at the first data change): that work is
    committed first. The connection is detached from the pool, so it is closed
    afterwards instead of being reused with foreign keys off."""
    connection.connection.detach()
    raw = connection.connection.dbapi_connection
    if raw is not None and raw.in_transaction:
        raw.commit()
    connection.exec_driver_sql("PRAGMA foreign_keys=OFF")


def rowcount(result: Result[Any]) -> int:
    """The rows an UPDATE or DELETE matched (SQLAlchemy types `execute`'s result generically)."""
    return cast(CursorResult[Any], result).rowcount


class Database:
    """Owns the engine and hands out transactions."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = make_engine(url)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """One unit of work: commit on success, roll back on any error."""
        with self._sessions() as session, session.begin():
            yield session

    def upgrade(self) -> None:
        """Bring the schema to the newest Alembic revision."""
        from alembic import command
        from alembic.config import Config

        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS_DIR))
        config.attributes["engine"] = self.engine
        command.upgrade(config, "head")

    def is_current(self) -> bool:
        from alembic.config import Config
        from alembic.runtime.migration import MigrationContext
        from alembic.script import ScriptDirectory

        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS_DIR))
        head = ScriptDirectory.from_config(config).get_current_head()
        with self.engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision() == head

    def dispose(self) -> None:
        self.engine.dispose()

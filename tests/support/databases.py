"""The database a test's relay uses: SQLite in its folder, or a throwaway PostgreSQL database.

`RELAY_TEST_DATABASE=postgresql` runs the suite on PostgreSQL (`make test` runs it both
ways): each relay folder gets its own database on the server of `RELAY_TEST_POSTGRES`
(default 127.0.0.1:5432, user postgres), named after the folder. Writing the config only
names it, as a SQLite file exists only once opened: `template.copy_set_up` clones a
template's set-up into it with `CREATE DATABASE ... TEMPLATE` (tens of milliseconds), or
creates it empty (`ensure`) when it copies nothing. Every database named during a test is
dropped after it, by a thread of its own while the next test runs, and every one left at
the end of the session.
"""

from __future__ import annotations

import hashlib
import os
import queue
import threading
import time
from pathlib import Path

import psycopg
import pytest

SQLITE = "sqlite"
POSTGRESQL = "postgresql"
BACKEND = os.environ.get("RELAY_TEST_DATABASE", SQLITE)
SERVER = os.environ.get("RELAY_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432")
PREFIX = f"relay_t{os.getpid()}_"

_made: list[str] = []  # named or created so far, dropped after the test
_pending: set[str] = set()  # named by a config, not created yet
_admin_connection: psycopg.Connection | None = None

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
    """One connection to the server's `postgres` database for the whole session: a new
    one for each statement would cost a backend start every time."""
    global _admin_connection
    if _admin_connection is None or _admin_connection.closed:
        _admin_connection = psycopg.connect(_dsn(), autocommit=True)
    return _admin_connection


def _dsn() -> str:
    return SERVER.replace("postgresql+psycopg://", "postgresql://") + "/postgres"


def database_for(root: Path) -> str:
    """The `database_url` for a relay whose config lives in `root`: a relative SQLite file,
    or a PostgreSQL database named after `root` (created by `clone` or `ensure`). A config
    written again in the same folder names the same database, as it names the same file."""
    if BACKEND == SQLITE:
        return "sqlite:///state/relay.db"
    name = PREFIX + hashlib.sha1(str(root.resolve()).encode()).hexdigest()[:16]
    if name not in _made:
        _made.append(name)
        _pending.add(name)
    return url_of(name)


def ensure(url: str) -> None:
    """Create the database `url` names, empty, if it is only named so far."""
    name = name_of(url)
    if name in _pending:
        create(name)


def create(name: str, template: str = "template0") -> None:
    conn = _admin()
    conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
    _pending.discard(name)
    if name not in _made:
        _made.append(name)


def clone(template: str, name: str) -> None:
    """`name` becomes a copy of `template` (whose connections must be closed)."""
    create(name, template)


def _drop(conn: psycopg.Connection, names: list[str]) -> None:
    """End the sessions still open on `names`, wait until they are gone, drop them. DROP
    DATABASE WITH (FORCE) ends them too, but then waits for them in steps of 100 ms."""
    sessions = "FROM pg_stat_activity WHERE datname = ANY(%s) AND pid <> pg_backend_pid()"
    conn.execute(f"SELECT pg_terminate_backend(pid) {sessions}", [names])
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        row = conn.execute(f"SELECT count(*) {sessions}", [names]).fetchone()
        if row is None or row[0] == 0:
            break
        time.sleep(0.002)
    for name in names:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


class _Dropper:
    """Drops a finished test's databases on a thread of its own: the next test starts while
    the server removes the files."""

    def __init__(self) -> None:
        self._queue: queue.Queue[list[str] | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._failure: BaseException | None = None

    def put(self, names: list[str]) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="drop-databases", daemon=True)
            self._thread.start()
        self._queue.put(names)

    def join(self) -> None:
        """Wait for every drop asked for; raise the first that failed."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None
        failure, self._failure = self._failure, None
        if failure is not None:
            raise failure

    def _run(self) -> None:
        with psycopg.connect(_dsn(), autocommit=True) as conn:
            while (names := self._queue.get()) is not None:
                try:
                    _drop(conn, names)
                except Exception as exc:  # reported by join(), at the end of the session
                    self._failure = self._failure or exc


_dropper = _Dropper()


def drop_made(keep: tuple[str, ...] = ()) -> None:
    """Drop the databases made so far, except `keep` (the session's templates), in the
    background."""
    doomed = [n for n in _made if n not in keep]
    for name in doomed:
        _made.remove(name)
    created = [n for n in doomed if n not in _pending]  # a name never created has no files
    _pending.difference_update(doomed)
    if created:
        _dropper.put(created)


def drop_all() -> None:
    """At the end of the session: wait for the drops under way, then drop what is left."""
    global _admin_connection
    _dropper.join()
    created = [n for n in _made if n not in _pending]
    _made.clear()
    _pending.clear()
    if created:
        _drop(_admin(), created)
    if _admin_connection is not None:
        _admin_connection.close()
        _admin_connection = None

"""What one command needs (`App`): the settings, the database, the keyring, the spool and
its logs, each opened on first use so that `--help` never loads the configuration.

Logs: the command owns the process, so it configures the root logger. Full records,
tracebacks included, go to the log file; the console gets one line per record, and never
a record the user already saw as "error: ...". The log file's handler is in place from the
command's start and opens the file at its first record: an internal error raised before
the command read its configuration (while it parses an argument) still reaches the file
that "see the log" means. `[log] format` and `level` apply once the configuration is read.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from functools import cached_property
from pathlib import Path
from typing import IO

import click

from relay.app import admin
from relay.core.config import Settings, load
from relay.core.crypto import Crypto
from relay.core.database import Database
from relay.core.logs import TEXT_DATEFMT, TEXT_FORMAT, clean, formatter
from relay.store.spool import Spool

log = logging.getLogger("relay.cli")
_ROOT = logging.getLogger()

FILE_ONLY = {"console": False}  # `extra` of a record the user already saw as "error: ..."


class _OneLine(logging.Formatter):
    """Console records without tracebacks: those go to the log file only."""

    def __init__(self, inner: logging.Formatter) -> None:
        super().__init__()
        self.inner = inner

    def format(self, record: logging.LogRecord) -> str:
        saved = record.exc_info, record.exc_text, record.stack_info
        record.exc_info = record.exc_text = record.stack_info = None
        try:
            return self.inner.format(record)
        finally:
            record.exc_info, record.exc_text, record.stack_info = saved


class _LogFile(logging.StreamHandler[IO[str]]):
    """The log file, opened at the first record it is given: `where` names it then (and
    may read the configuration to do so). None from `where`, or a file that cannot be
    opened (a warning on the console), and the records are dropped."""

    def __init__(self, where: Callable[[], Path | None]) -> None:
        super().__init__(sys.stderr)
        self.stream: IO[str] | None = None  # type: ignore[assignment]
        self.path: Path | None = None
        self._where = where
        self._tried = False
        self.setFormatter(formatter("text"))

    def open(self) -> Path | None:
        """Open the file now, if not tried yet; its path, None if there is none."""
        if not self._tried:
            self._tried = True  # first: the warning below comes back through this handler
            path = self._where()
            if path is not None:
                try:
                    path.parent.mkdir(parents=True, exist_ok=True)
                    self.stream = path.open("a", encoding="utf-8")
                    self.path = path
                except OSError as exc:
                    reason = clean(exc.strerror or exc)
                    log.warning("cannot open log file %s: %s", clean(path), reason)
        return self.path

    def emit(self, record: logging.LogRecord) -> None:
        self.open()
        if self.stream is not None:
            super().emit(record)

    def close(self) -> None:
        self.acquire()
        try:
            if self.stream is not None:
                self.stream.close()
                self.stream = None
        finally:
            self.release()
        logging.Handler.close(self)


class App:
    """What one command needs, opened on first use so that `--help` never loads the config."""

    def __init__(self, config: str | None, log_file: str | None) -> None:
        self.config = config
        self.log_file = log_file
        self._db: Database | None = None
        self._handlers: list[logging.Handler] = []
        self.console: logging.Handler = logging.NullHandler()
        self.file = _LogFile(self._log_path)

    @cached_property
    def settings(self) -> Settings:
        settings = load(self.config)
        logging.getLogger("relay").setLevel(settings.log.level)
        kind = settings.log.format
        self.file.setFormatter(formatter(kind))
        self.console.setFormatter(_OneLine(formatter(kind)))
        return settings

    def _log_path(self) -> Path | None:
        """`--log-file`, else beside the spool; None when the configuration cannot be read."""
        if self.log_file:
            return Path(self.log_file)
        try:
            return default_log_file(self.settings)
        except Exception:  # the command reports a broken configuration itself
            return None

    def add_handler(self, handler: logging.Handler | None) -> None:
        """Log through `handler` for the rest of this command."""
        if handler is not None:
            _ROOT.addHandler(handler)
            self._handlers.append(handler)

    @property
    def db(self) -> Database:
        if self._db is None:
            self._db = admin.open_database(self.settings)
            admin.require_schema(self._db)
            admin.unseal(self._db, self.crypto)
        return self._db

    @cached_property
    def crypto(self) -> Crypto:
        return admin.open_keyring(self.settings)

    @cached_property
    def spool(self) -> Spool:
        return Spool(self.db)

    def close(self) -> None:
        if self._db is not None:
            self._db.dispose()
        for handler in self._handlers:
            _ROOT.removeHandler(handler)
            handler.close()


def open_app(config: str | None, log_file: str | None, *, verbose: bool) -> App:
    """The command's `App`, with the root logger set up: the log file's handler (the file
    opens at the first record) and the console's."""
    _ROOT.setLevel(logging.WARNING)  # libraries: warnings only (alembic is chatty at INFO)
    logging.getLogger("relay").setLevel(logging.INFO)
    # python-gnupg warns about every look-up that finds nothing; the relay does those on purpose.
    logging.getLogger("gnupg").setLevel(logging.ERROR)
    app = App(config, log_file)
    app.add_handler(app.file)
    app.console = _console_handler(logging.INFO if verbose else logging.WARNING)
    app.add_handler(app.console)
    return app


def app_of(ctx: click.Context) -> App:
    """The `App` of the running command."""
    return ctx.find_object(App)  # type: ignore[return-value]


def default_log_file(settings: Settings) -> Path:
    """Beside the spool: `var/relay.log` with the example configuration."""
    return settings.storage.spool_dir.parent / "relay.log"


def _console_handler(level: int) -> logging.Handler:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_OneLine(logging.Formatter(TEXT_FORMAT, TEXT_DATEFMT)))
    handler.setLevel(level)
    handler.addFilter(lambda record: getattr(record, "console", True))
    return handler

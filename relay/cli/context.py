"""What one command needs (`App`): the settings, the database, the keyring, the spool and
its logs, each opened on first use so that `--help` never loads the configuration.

Logs: the command owns the process, so it configures the root logger. Full records,
tracebacks included, go to the log file; the console gets one line per record, and never
a record the user already saw as "error: ...".
"""

from __future__ import annotations

import logging
import sys
from functools import cached_property
from pathlib import Path

import click

from relay.app import admin
from relay.core.config import Settings, load
from relay.core.database import Database
from relay.core.gpg import GnuPG
from relay.core.logs import clean
from relay.store.spool import Spool

log = logging.getLogger("relay.cli")
_ROOT = logging.getLogger()

FILE_ONLY = {"console": False}  # `extra` of a record the user already saw as "error: ..."
_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_DATEFMT = "%Y-%m-%dT%H:%M:%S%z"


class _OneLine(logging.Formatter):
    """Console records without tracebacks: those go to the log file only."""

    def format(self, record: logging.LogRecord) -> str:
        saved = record.exc_info, record.exc_text, record.stack_info
        record.exc_info = record.exc_text = record.stack_info = None
        try:
            return super().format(record)
        finally:
            record.exc_info, record.exc_text, record.stack_info = saved


class App:
    """What one command needs, opened on first use so that `--help` never loads the config."""

    def __init__(self, config: str | None, log_file: str | None) -> None:
        self.config = config
        self.log_file = log_file
        self._db: Database | None = None
        self._handlers: list[logging.Handler] = []
        self.console: logging.Handler = logging.NullHandler()

    @cached_property
    def settings(self) -> Settings:
        settings = load(self.config)
        path = Path(self.log_file) if self.log_file else default_log_file(settings)
        self.add_handler(_file_handler(path))
        return settings

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
    def crypto(self) -> GnuPG:
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
    """The command's `App`, with the root logger set up and the console handler added."""
    _ROOT.setLevel(logging.WARNING)  # libraries: warnings only (alembic is chatty at INFO)
    logging.getLogger("relay").setLevel(logging.INFO)
    # python-gnupg warns about every look-up that finds nothing; the relay does those on purpose.
    logging.getLogger("gnupg").setLevel(logging.ERROR)
    app = App(config, log_file)
    app.console = _console_handler(logging.INFO if verbose else logging.WARNING)
    app.add_handler(app.console)
    return app


def app_of(ctx: click.Context) -> App:
    """The `App` of the running command."""
    return ctx.find_object(App)  # type: ignore[return-value]


def default_log_file(settings: Settings) -> Path:
    """Beside the spool: `var/relay.log` with the example configuration."""
    return settings.storage.spool_dir.parent / "relay.log"


def _file_handler(path: Path) -> logging.Handler | None:
    """Full records, tracebacks included; None (with a warning) if the file cannot be opened."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(path, encoding="utf-8", delay=True)
    except OSError as exc:
        log.warning("cannot open log file %s: %s", clean(path), clean(exc.strerror or exc))
        return None
    handler.setFormatter(logging.Formatter(_FORMAT, _DATEFMT))
    handler.setLevel(logging.INFO)
    return handler


def _console_handler(level: int) -> logging.Handler:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_OneLine(_FORMAT, _DATEFMT))
    handler.setLevel(level)
    handler.addFilter(lambda record: getattr(record, "console", True))
    return handler

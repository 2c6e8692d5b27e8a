"""The `relay` command: a thin shell over `relay.admin` for administrators and scripts.

Exit codes: 0 success, 1 a refused or failed operation ("error: ..." on stderr),
2 a usage error (from click), 70 an internal error. An internal error shows one
line on stderr; its traceback goes only to the log file, never to the terminal.
Lists are rich tables for people and `--json` for scripts; times carry their zone.
"""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import asdict, is_dataclass
from datetime import datetime
from functools import cached_property
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table
from rich.text import Text

from relay.app import admin
from relay.core import addresses
from relay.core.config import ENV_VAR, Settings, load
from relay.core.database import Database
from relay.core.errors import RelayError
from relay.core.gpg import GnuPG
from relay.core.logs import clean
from relay.core.spool import Spool
from relay.store import audit

log = logging.getLogger("relay.cli")
_ROOT = logging.getLogger()  # the command owns the process, so it configures the root logger

EX_INTERNAL = 70  # EX_SOFTWARE in sysexits.h
_FILE_ONLY = {"console": False}  # a record the user already saw as "error: ..."
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
        return self._db

    @cached_property
    def crypto(self) -> GnuPG:
        return admin.open_keyring(self.settings)

    @cached_property
    def spool(self) -> Spool:
        return Spool(self.settings.storage.spool_dir)

    def close(self) -> None:
        if self._db is not None:
            self._db.dispose()
        for handler in self._handlers:
            _ROOT.removeHandler(handler)
            handler.close()


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


class RelayGroup(click.Group):
    """Turns errors into one line on stderr and the documented exit codes."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except RelayError as exc:
            click.echo(f"error: {exc}", err=True)
            ctx.exit(1)
        except Exception as exc:
            log.error(
                "internal error in %s", ctx.invoked_subcommand, exc_info=True, extra=_FILE_ONLY
            )
            click.echo(f"error: internal error ({type(exc).__name__}); see the log", err=True)
            ctx.exit(EX_INTERNAL)


def _app(ctx: click.Context) -> App:
    return ctx.find_object(App)  # type: ignore[return-value]


# Output helpers


def _when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M %Z") if value else "-"


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if is_dataclass(value) and not isinstance(value, type):
        return asdict(value)
    raise TypeError(type(value).__name__)


def _print_json(data: Any) -> None:
    click.echo(json.dumps(data, default=_json_default, indent=2, ensure_ascii=False))


def _table(title: str, columns: list[str], rows: list[list[str]]) -> None:
    if not rows:
        click.echo(f"{title}: none")
        return
    table = Table(title=title, title_justify="left")
    for name in columns:
        table.add_column(name, overflow="fold")
    for row in rows:
        # Text(), not markup: a name such as "[red]" must print as typed.
        table.add_row(*(Text(cell) for cell in row))
    wide = None if sys.stdout.isatty() else 200
    Console(width=wide, soft_wrap=False).print(table)


# Commands


@click.group(cls=RelayGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--config",
    "config",
    type=click.Path(dir_okay=False),
    help=f"Configuration file (default: ${ENV_VAR}, else ./config.example.toml).",
)
@click.option(
    "--log-file",
    envvar="RELAY_LOG_FILE",
    type=click.Path(dir_okay=False),
    help="Log file (default: relay.log beside the spool directory; env RELAY_LOG_FILE).",
)
@click.option("-v", "--verbose", is_flag=True, help="Also show informational log lines.")
@click.version_option(package_name="embargo-relay", prog_name="relay")
@click.pass_context
def cli(ctx: click.Context, config: str | None, log_file: str | None, verbose: bool) -> None:
    """Embargo Relay: a private, encrypted security-announcement list."""
    _ROOT.setLevel(logging.WARNING)  # libraries: warnings only (alembic is chatty at INFO)
    logging.getLogger("relay").setLevel(logging.INFO)
    # python-gnupg warns about every look-up that finds nothing; the relay does those on purpose.
    logging.getLogger("gnupg").setLevel(logging.ERROR)
    app = App(config, log_file)
    app.console = _console_handler(logging.INFO if verbose else logging.WARNING)
    app.add_handler(app.console)
    ctx.obj = app
    ctx.call_on_close(app.close)


@cli.command()
@click.pass_context
def init(ctx: click.Context) -> None:
    """Create the database, spool and GnuPG home, and the list key if there is none.

    Safe to run again: nothing that exists is changed.
    """
    app = _app(ctx)
    report = admin.init_relay(app.settings, audit.cli_actor())
    verb = "created" if report.key_created else "already present"
    click.echo(f"list key {verb}: {report.fingerprint}")
    click.echo(f"list address: {app.settings.list.address}")


@cli.command()
@click.pass_context
def serve(ctx: click.Context) -> None:
    """Run the relay (SMTP intake and delivery) until SIGINT or SIGTERM."""
    app = _app(ctx)
    app.console.setLevel(logging.INFO)
    report = admin.init_relay(app.settings, audit.cli_actor())
    log.info("list key %s", report.fingerprint)
    from relay.runners import service

    service.serve(app.settings)


# Members


@cli.group()
def member() -> None:
    """Members: distributors who receive encrypted copies."""


@member.command("add")
@click.argument("address")
@click.option("--name", required=True, help="Who the member is, e.g. the distribution's name.")
@click.option(
    "--key",
    "key_file",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="File with the member's public key(s), armoured or binary.",
)
@click.pass_context
def member_add(ctx: click.Context, address: str, name: str, key_file: Path) -> None:
    """Add a member; every key in the file must be usable for encryption."""
    app = _app(ctx)
    data = admin.read_key_file(key_file)
    view = admin.add_member(
        app.db, app.crypto, app.settings, address, name, data, audit.cli_actor()
    )
    click.echo(f"member added: {view.address} with key(s) {', '.join(view.fingerprints)}")


@member.command("list")
@click.option("--all", "show_all", is_flag=True, help="Include removed members.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def member_list(ctx: click.Context, show_all: bool, as_json: bool) -> None:
    """List members with their keys' state and the leaks recorded against them."""
    app = _app(ctx)
    members = admin.list_members(app.db, app.crypto, include_removed=show_all)
    if as_json:
        _print_json([{**asdict(m), "key_count": m.key_count} for m in members])
        return
    rows = [
        [
            m.address,
            m.name,
            m.state,
            str(m.key_count),
            "yes" if m.usable else f"no: {m.problem}",
            str(m.incidents),
        ]
        for m in members
    ]
    _table("Members", ["address", "name", "state", "keys", "usable key", "incidents"], rows)


@member.command("remove")
@click.argument("address")
@click.option("--reason", help="Why (kept in the audit trail).")
@click.pass_context
def member_remove(ctx: click.Context, address: str, reason: str | None) -> None:
    """Remove a member (kept for history) and cancel their unsent deliveries."""
    app = _app(ctx)
    cancelled = admin.remove_member(app.db, address, audit.cli_actor(), reason)
    address = addresses.normalise_address(address)
    click.echo(f"member removed: {address}; {cancelled} unsent deliveries cancelled")


# Senders


@cli.group()
def sender() -> None:
    """Authorised senders: SRC members and the security contact, known by their signing keys."""


@sender.command("add")
@click.argument("address")
@click.option(
    "--key",
    "key_file",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="File with the sender's public key(s).",
)
@click.pass_context
def sender_add(ctx: click.Context, address: str, key_file: Path) -> None:
    """Authorise a sender: posts signed by these keys are distributed."""
    app = _app(ctx)
    data = admin.read_key_file(key_file)
    view = admin.add_sender(app.db, app.crypto, app.settings, address, data, audit.cli_actor())
    click.echo(f"sender added: {view.address} with key(s) {', '.join(view.fingerprints)}")


@sender.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def sender_list(ctx: click.Context, as_json: bool) -> None:
    """List authorised senders."""
    app = _app(ctx)
    senders = admin.list_senders(app.db, app.crypto)
    if as_json:
        _print_json(senders)
        return
    rows = [
        [s.address, "\n".join(s.fingerprints), "yes" if s.usable else f"no: {s.problem}"]
        for s in senders
    ]
    _table("Authorised senders", ["address", "keys", "usable key"], rows)


@sender.command("remove")
@click.argument("address")
@click.pass_context
def sender_remove(ctx: click.Context, address: str) -> None:
    """Withdraw a sender's authorisation."""
    app = _app(ctx)
    admin.remove_sender(app.db, address, audit.cli_actor())
    click.echo(f"sender removed: {addresses.normalise_address(address)}")


# Keys


@cli.group()
def key() -> None:
    """Keys in the relay's keyring."""


@key.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def key_list(ctx: click.Context, as_json: bool) -> None:
    """Every key with its owners and status (usable, expired, revoked, weak, sign-only)."""
    app = _app(ctx)
    keys = admin.list_keys(app.db, app.crypto)
    if as_json:
        _print_json(keys)
        return
    rows = [
        [
            k.fingerprint,
            "\n".join(k.owners) or "(none)",
            f"{k.algorithm} {k.bits}",
            _when(k.created_at),
            _when(k.expires_at) if k.expires_at else "never",
            k.status,
        ]
        for k in keys
    ]
    _table("Keys", ["fingerprint", "owner", "algorithm", "created", "expires", "status"], rows)


# Queue


@cli.group(invoke_without_command=True)
@click.option("--all", "show_all", is_flag=True, help="Include sent deliveries.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def queue(ctx: click.Context, show_all: bool, as_json: bool) -> None:
    """Show deliveries not yet sent (queued, active, deferred, held, failed)."""
    if ctx.invoked_subcommand is not None:
        return
    app = _app(ctx)
    deliveries = admin.list_deliveries(app.db, include_sent=show_all)
    if as_json:
        _print_json(deliveries)
        return
    rows = [
        [
            str(d.id),
            d.message_id,
            d.recipient,
            d.status,
            str(d.attempts),
            _when(d.next_attempt_at),
            " ".join(filter(None, [d.last_code, d.last_reason])) or "-",
        ]
        for d in deliveries
    ]
    columns = ["id", "message", "recipient", "status", "attempts", "next attempt", "last result"]
    _table("Deliveries", columns, rows)


@queue.command("retry")
@click.argument("delivery_id", type=int)
@click.pass_context
def queue_retry(ctx: click.Context, delivery_id: int) -> None:
    """Queue a held, deferred or failed delivery for an attempt now."""
    app = _app(ctx)
    view = admin.retry_delivery(app.db, delivery_id, audit.cli_actor())
    click.echo(f"delivery {view.id} to {view.recipient} queued for an attempt now")


def main() -> None:
    cli(prog_name="relay")

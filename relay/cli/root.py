"""The `relay` command: the group every command belongs to, the setup commands (`init`,
`serve`) and the exit codes; each other module of relay.cli adds one group of commands.

Exit codes: 0 success, 1 a refused or failed operation ("error: ..." on stderr),
2 a usage error (from click), 70 an internal error. An internal error shows one
line on stderr; its traceback goes only to the log file, never to the terminal.
Lists are rich tables for people and `--json` for scripts (output.py); times carry their
zone.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

import click

from relay.app import admin
from relay.cli.context import FILE_ONLY, app_of, open_app
from relay.core.config import ENV_VAR
from relay.core.errors import RelayError
from relay.store import audit

log = logging.getLogger("relay.cli")

EX_INTERNAL = 70  # EX_SOFTWARE in sysexits.h


class RelayGroup(click.Group):
    """Turns errors into one line on stderr and the documented exit codes."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        # `relay` alone asks what there is to do: the help, and success (click says 2).
        if not args and not ctx.resilient_parsing:
            click.echo(ctx.get_help())
            ctx.exit(0)
        return super().parse_args(ctx, args)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except RelayError as exc:
            click.echo(f"error: {exc}", err=True)
            ctx.exit(1)
        except BrokenPipeError:
            # `relay queue | head`: the reader left, which is no error of the relay's.
            # Point stdout at /dev/null so the interpreter's own flush at exit stays quiet.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            ctx.exit(0)
        except Exception as exc:
            log.error(
                "internal error in %s", ctx.invoked_subcommand, exc_info=True, extra=FILE_ONLY
            )
            click.echo(f"error: internal error ({type(exc).__name__}); see the log", err=True)
            ctx.exit(EX_INTERNAL)


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
    app = open_app(config, log_file, verbose=verbose)
    ctx.obj = app
    ctx.call_on_close(app.close)


@cli.command()
@click.pass_context
def init(ctx: click.Context) -> None:
    """Create the database, spool and keyring, and the list key if there is none.

    Safe to run again: nothing that exists is changed.
    """
    app = app_of(ctx)
    report = admin.init_relay(app.settings, audit.cli_actor())
    verb = "created" if report.key_created else "already present"
    click.echo(f"list key {verb}: {report.fingerprint}")
    click.echo(f"list address: {app.settings.list.address}")


@cli.command()
@click.pass_context
def serve(ctx: click.Context) -> None:
    """Run the relay (SMTP intake and delivery) until SIGINT or SIGTERM."""
    app = app_of(ctx)
    app.console.setLevel(logging.INFO)
    report = admin.init_relay(app.settings, audit.cli_actor())
    log.info("list key %s", report.fingerprint)
    from relay.runners import service

    service.serve(app.settings)


def main() -> None:
    cli(prog_name="relay")

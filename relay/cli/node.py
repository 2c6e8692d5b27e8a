"""`relay node export-key|import-key`: the list's secret key carried to a new node, encrypted
under a passphrase (relay/app/nodes.py).

The passphrase comes from `--passphrase-file` (its first line) or `$RELAY_NODE_PASSPHRASE`,
never from the command line, where other users of the machine could read it.

Part of the `relay` command: importing this module adds the `node` group to `cli`.
"""

from __future__ import annotations

import os
from pathlib import Path

import click

from relay.app import nodes
from relay.cli.context import app_of
from relay.cli.root import cli
from relay.core.errors import RelayError
from relay.core.secret_files import first_line
from relay.store import audit

PASSPHRASE_VAR = "RELAY_NODE_PASSPHRASE"

_PASSPHRASE_FILE = click.option(
    "--passphrase-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help=f"File whose first line is the passphrase (default: ${PASSPHRASE_VAR}).",
)


def _passphrase(path: Path | None) -> str:
    if path is None:
        value = os.environ.get(PASSPHRASE_VAR, "")
    else:
        try:
            value = first_line(path)
        except ValueError as reason:
            raise RelayError(f"cannot read the passphrase file {path}: {reason}") from None
    if not value:
        raise RelayError(f"no passphrase: give --passphrase-file FILE or set ${PASSPHRASE_VAR}")
    return value


@cli.group()
def node() -> None:
    """Nodes: several `relay serve` with one configuration on one database."""


@node.command("export-key")
@click.option(
    "--to",
    "target",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="The new file for the encrypted key (mode 0600; never overwritten).",
)
@_PASSPHRASE_FILE
@click.pass_context
def export_key(ctx: click.Context, target: Path, passphrase_file: Path | None) -> None:
    """Write the list's secret key for a new node, encrypted under a passphrase."""
    app = app_of(ctx)
    passphrase = _passphrase(passphrase_file)
    done = nodes.export_list_key(
        app.db, app.crypto, app.settings, target, passphrase, audit.cli_actor()
    )
    click.echo(f"list key {done.fingerprint} written to {done.path}, encrypted")
    click.echo("on the new node, before 'relay init' or 'relay serve': relay node import-key FILE")


@node.command("import-key")
@click.argument("key_file", metavar="FILE", type=click.Path(dir_okay=False, path_type=Path))
@_PASSPHRASE_FILE
@click.pass_context
def import_key(ctx: click.Context, key_file: Path, passphrase_file: Path | None) -> None:
    """Import the list's secret key that `relay node export-key` wrote into this node."""
    app = app_of(ctx)
    try:
        data = key_file.read_bytes()
    except OSError as exc:
        raise RelayError(f"cannot read {key_file}: {exc.strerror or exc}") from None
    passphrase = _passphrase(passphrase_file)
    done = nodes.import_list_key(app.settings, data, passphrase, audit.cli_actor())
    verb = "was already" if done.already_present else "imported"
    click.echo(f"list key {done.fingerprint} {verb} in {done.path}")

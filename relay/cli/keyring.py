"""`relay keyring migrate --to sequoia|gnupg`: the relay's keys moved from one OpenPGP
backend's keyring to the other's (relay/app/keyring_moves.py).

Part of the `relay` command: importing this module adds the `keyring` group to `cli`.
"""

from __future__ import annotations

import click

from relay.app import keyring_moves
from relay.cli.context import app_of
from relay.cli.root import cli
from relay.core.config import BACKENDS, Backend
from relay.store import audit


@cli.group()
def keyring() -> None:
    """The keyring of the list key: GnuPG home or Sequoia keyring folder ([gnupg] backend)."""


@keyring.command("migrate")
@click.option(
    "--to",
    "target",
    required=True,
    type=click.Choice(BACKENDS),
    help="The backend whose keyring receives the keys ([gnupg] keyring or [gnupg] home).",
)
@click.pass_context
def migrate(ctx: click.Context, target: Backend) -> None:
    """Copy the list's secret key and the public keys from the other backend's keyring
    into TARGET's, and check that it opens the database and signs as the list key.

    The old keyring is left as it was. Then set `[gnupg] backend` to TARGET and restart
    the relay; remove the old keyring's copy of the list key once the relay runs on the
    new one.
    """
    app = app_of(ctx)
    done = keyring_moves.move_keyring(app.settings, target, audit.cli_actor())
    click.echo(f"list key {done.fingerprint}: {done.source_path} -> {done.target_path}")
    click.echo(f"public keys copied: {done.public_keys}; data keys opened: {done.data_keys}")
    for fingerprint, why in done.refused:
        click.echo(f"not copied: {fingerprint}: {why}", err=True)
    if app.settings.gnupg.backend != target:
        click.echo(
            f'next: set [gnupg] backend = "{target}" in {app.settings.source} and restart the relay'
        )
    click.echo(
        f"the {done.source} keyring ({done.source_path}) still holds the list key: remove it"
        " once the relay runs on the new keyring"
    )

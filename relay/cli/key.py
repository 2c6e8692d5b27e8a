"""`relay key export [--wkd DIR]`: the list's public key, for members to check the list's
signature on every copy (relay/app/list_key.py).

Without `--wkd` the armoured key goes to stdout, alone, so that `relay key export >
list.asc` is a file to import; its fingerprint goes to stderr, on a line of its own, to
compare with what the list announced by another channel.

Part of the `relay` command: importing this module adds `export` to the `key` group.
"""

from __future__ import annotations

from pathlib import Path

import click

from relay.app import list_key
from relay.cli.context import app_of
from relay.cli.roster import key


@key.command("export")
@click.option(
    "--wkd",
    "wkd_root",
    type=click.Path(file_okay=False, path_type=Path),
    help="Write a Web Key Directory tree under this folder instead (created if missing).",
)
@click.pass_context
def key_export(ctx: click.Context, wkd_root: Path | None) -> None:
    """Print the list's public key (armoured, minimal: the list's user ID only, no
    third-party signatures) on stdout and its fingerprint on stderr, so that members
    can check the list's signature on their copies:

    \b
        relay key export > list.asc
        gpg --import list.asc

    With --wkd DIR, write the key (binary) and an empty policy file for both methods
    of the Web Key Directory instead; files are world-readable, folders are created:

    \b
        DIR/.well-known/openpgpkey/<domain>/hu/<hash>  advanced: https://openpgpkey.<domain>/
        DIR/.well-known/openpgpkey/hu/<hash>           direct: https://<domain>/

    Serve DIR as the web root of those hosts; then `gpg --locate-keys <list address>`
    finds the key.
    """
    app = app_of(ctx)
    if wkd_root is None:
        exported = list_key.public_key(app.crypto, app.settings)
        click.echo(exported.armoured, nl=False)  # bytes: written as they are
        click.echo(exported.fingerprint, err=True)
        return
    tree = list_key.write_wkd(app.crypto, app.settings, wkd_root)
    click.echo(f"list key {tree.fingerprint} ({tree.address}) written for WKD:")
    for path in tree.files:
        click.echo(f"  {path}")

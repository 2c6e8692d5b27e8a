"""`relay admin add|list|remove|token|tokens|revoke`: the console's administrators and their
API tokens (relay/app/admins.py).

A password comes from `--password-file` (its first line) or is typed twice at a hidden
prompt, never from the command line, where other users of the machine could read it. A
token is printed once, when issued; the relay keeps only its hash.

Part of the `relay` command: importing this module adds the `admin` group to `cli`.
"""

from __future__ import annotations

from pathlib import Path

import click

from relay.app import admins
from relay.cli.context import app_of
from relay.cli.output import print_json, short_when, table
from relay.cli.root import cli
from relay.core.errors import RelayError
from relay.core.secret_files import first_line
from relay.store import audit

_JSON = click.option("--json", "as_json", is_flag=True, help="Print JSON (for scripts).")


def _password(path: Path | None) -> str:
    if path is None:
        value: str = click.prompt("Password", hide_input=True, confirmation_prompt=True)
        return value
    try:
        value = first_line(path)
    except ValueError as reason:
        raise RelayError(f"cannot read the password file {path}: {reason}") from None
    if not value:
        raise RelayError(f"no password: the first line of {path} is empty")
    return value


@cli.group("admin")
def admin_group() -> None:
    """Administrators of the console (web pages and HTTP API) and their API tokens."""


@admin_group.command("add")
@click.argument("name")
@click.option(
    "--password-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="File whose first line is the password (default: asked for, twice, unseen).",
)
@click.pass_context
def admin_add(ctx: click.Context, name: str, password_file: Path | None) -> None:
    """Add an administrator (1 to 64 letters, digits, '.', '_' or '-'); the password needs
    at least 12 characters and must not be the name."""
    db = app_of(ctx).db
    admins.check_name(name)
    view = admins.add_admin(db, name, _password(password_file), audit.cli_actor())
    click.echo(f"admin added: {view.name}")


@admin_group.command("list")
@_JSON
@click.pass_context
def admin_list(ctx: click.Context, as_json: bool) -> None:
    """The administrators, with their last login and live tokens."""
    views = admins.list_admins(app_of(ctx).db)
    if as_json:
        print_json(views)
        return
    table(
        "Administrators",
        ["name", "created", "by", "last login", "tokens"],
        [
            [
                a.name,
                short_when(a.created_at),
                a.created_by,
                short_when(a.last_login_at),
                str(a.tokens),
            ]
            for a in views
        ],
    )


@admin_group.command("remove")
@click.argument("name")
@click.pass_context
def admin_remove(ctx: click.Context, name: str) -> None:
    """Remove an administrator: its tokens are revoked and its sessions end now."""
    admins.remove_admin(app_of(ctx).db, name, audit.cli_actor())
    click.echo(f"admin removed: {name}; its tokens are revoked and its sessions ended")


@admin_group.command("token")
@click.argument("name")
@click.option("--label", help="What the token is for, e.g. the script that uses it.")
@click.pass_context
def admin_token(ctx: click.Context, name: str, label: str | None) -> None:
    """Issue an API token for an administrator and print it, once."""
    view, secret = admins.issue_token(app_of(ctx).db, name, audit.cli_actor(), label)
    click.echo(f"token {view.id} issued for {view.admin}:")
    click.echo(secret)
    click.echo("It is not shown again: keep it now (the relay stores only its hash).")


@admin_group.command("tokens")
@click.argument("name", required=False)
@_JSON
@click.pass_context
def admin_tokens(ctx: click.Context, name: str | None, as_json: bool) -> None:
    """The API tokens (never their secrets), of every administrator or of NAME."""
    views = admins.list_tokens(app_of(ctx).db, name)
    if as_json:
        print_json(views)
        return
    table(
        "API tokens",
        ["id", "admin", "label", "created", "last used", "revoked"],
        [
            [
                str(t.id),
                t.admin,
                t.label or "-",
                short_when(t.created_at),
                short_when(t.last_used_at),
                short_when(t.revoked_at),
            ]
            for t in views
        ],
    )


@admin_group.command("revoke")
@click.argument("token_id", metavar="TOKEN_ID", type=int)
@click.pass_context
def admin_revoke(ctx: click.Context, token_id: int) -> None:
    """Revoke an API token (its id from 'relay admin tokens'); it stops working at once."""
    view = admins.revoke_token(app_of(ctx).db, token_id, audit.cli_actor())
    click.echo(f"token {view.id} of {view.admin} revoked")

"""`relay member add|list|remove`, `relay sender add|list|remove` and `relay key list`: who
is on the list, who may post to it, and the keys the relay holds for them.

Part of the `relay` command: importing this module adds the `member`, `sender` and `key`
groups to `cli`; other modules add further commands to `member` and `key`.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import click

from relay.app import admin, members, membership
from relay.app.membership import Move
from relay.cli import lookup
from relay.cli.context import app_of
from relay.cli.output import print_json, short_when, table
from relay.cli.root import cli
from relay.core import addresses
from relay.store import audit


@cli.group()
def member() -> None:
    """Members: distributors who receive encrypted copies."""


@member.command("add")
@click.argument("address")
@click.option("--name", required=True, help="Who the member is, e.g. the distribution's name.")
@click.option(
    "--key",
    "key_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="File with the member's public key(s), armoured or binary (default: none yet).",
)
@click.pass_context
def member_add(ctx: click.Context, address: str, name: str, key_file: Path | None) -> None:
    """Add a member; every key in the file must be usable for encryption.

    Without --key the member is added with no key: its copies are held (never sent in
    plaintext) until 'relay key import', and the security contact is told.
    """
    app = app_of(ctx)
    data = None if key_file is None else admin.read_key_file(key_file)
    view = members.add_member(
        app.db, app.crypto, app.settings, address, name, data, audit.cli_actor()
    )
    if view.fingerprints:
        click.echo(f"member added: {view.address} with key(s) {', '.join(view.fingerprints)}")
    else:
        click.echo(f"member added: {view.address} with no key")
    if not view.usable:
        why = f"no usable key ({view.problem})" if view.fingerprints else "no key"
        click.echo(
            f"note: {why}: copies to this member are held until a key is added "
            f"('relay key import FILE --member {view.address}'); the security contact was told"
        )


@member.command("list")
@click.option("--all", "show_all", is_flag=True, help="Include removed members.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def member_list(ctx: click.Context, show_all: bool, as_json: bool) -> None:
    """List members with their keys' state and the leaks recorded against them."""
    app = app_of(ctx)
    views = members.list_members(app.db, app.crypto, include_removed=show_all)
    if as_json:
        print_json([{**asdict(m), "key_count": m.key_count} for m in views])
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
        for m in views
    ]
    table("Members", ["address", "name", "state", "keys", "usable key", "incidents"], rows)


@member.command("remove")
@click.argument("address", callback=lookup.member)
@click.option("--reason", help="Why (kept in the audit trail).")
@click.pass_context
def member_remove(ctx: click.Context, address: str, reason: str | None) -> None:
    """Remove a member (kept for history) and cancel their unsent deliveries."""
    app = app_of(ctx)
    change = membership.change_state(app.db, address, Move.REMOVE, audit.cli_actor(), reason)
    click.echo(f"member removed: {change.address}; {change.cancelled} unsent deliveries cancelled")


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
    app = app_of(ctx)
    data = admin.read_key_file(key_file)
    view = admin.add_sender(app.db, app.crypto, app.settings, address, data, audit.cli_actor())
    click.echo(f"sender added: {view.address} with key(s) {', '.join(view.fingerprints)}")


@sender.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def sender_list(ctx: click.Context, as_json: bool) -> None:
    """List authorised senders."""
    app = app_of(ctx)
    senders = admin.list_senders(app.db, app.crypto)
    if as_json:
        print_json(senders)
        return
    rows = [
        [s.address, "\n".join(s.fingerprints), "yes" if s.usable else f"no: {s.problem}"]
        for s in senders
    ]
    table("Authorised senders", ["address", "keys", "usable key"], rows)


@sender.command("remove")
@click.argument("address", callback=lookup.sender)
@click.pass_context
def sender_remove(ctx: click.Context, address: str) -> None:
    """Withdraw a sender's authorisation."""
    app = app_of(ctx)
    admin.remove_sender(app.db, address, audit.cli_actor())
    click.echo(f"sender removed: {addresses.normalise_address(address)}")


@cli.group()
def key() -> None:
    """Keys in the relay's keyring."""


@key.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def key_list(ctx: click.Context, as_json: bool) -> None:
    """Every key with its owners and status (usable, expired, revoked, weak, sign-only)."""
    app = app_of(ctx)
    keys = admin.list_keys(app.db, app.crypto)
    if as_json:
        print_json(keys)
        return
    rows = [
        [
            k.fingerprint,
            "\n".join(k.owners) or "(none)",
            f"{k.algorithm} {k.bits}",
            short_when(k.created_at),
            short_when(k.expires_at) if k.expires_at else "never",
            k.status,
        ]
        for k in keys
    ]
    table("Keys", ["fingerprint", "owner", "algorithm", "created", "expires", "status"], rows)

"""`relay held list|release|reject`: members' posts waiting for a moderator.

Part of the `relay` command: importing this module adds the `held` group to `cli`.
"""

from __future__ import annotations

import click

from relay.app import moderation
from relay.cli import lookup
from relay.cli.context import app_of
from relay.cli.output import print_json, table
from relay.cli.root import cli
from relay.core.times import format_when
from relay.store import audit


@cli.group()
def held() -> None:
    """Members' posts held for moderation (the list's posting policy)."""


@held.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def held_list(ctx: click.Context, as_json: bool) -> None:
    """Posts waiting for a moderator: id, advisory, poster, received, held copies."""
    rows = [
        {
            "id": post.id,
            "advisory": post.advisory_id,
            "from": post.mail_from,
            "signer": post.signer,
            "received_at": post.received_at.isoformat(),
            "received": format_when(post.received_at),
            "copies": post.copies,
        }
        for post in moderation.held_posts(app_of(ctx).db)
    ]
    if as_json:
        print_json(rows)
        return
    if not rows:
        click.echo("No posts are waiting for moderation.")
        return
    table(
        "Held for moderation",
        ["id", "advisory", "from", "received", "copies"],
        [
            [
                str(r["id"]),
                str(r["advisory"] or "-"),
                str(r["from"]),
                str(r["received"]),
                str(r["copies"]),
            ]
            for r in rows
        ],
    )


@held.command("release")
@click.argument("message_id", callback=lookup.post)
@click.pass_context
def held_release(ctx: click.Context, message_id: str) -> None:
    """Send a held post on to its audience."""
    count = moderation.release(app_of(ctx).db, message_id, audit.cli_actor())
    click.echo(f"released: {message_id} ({count} copies queued)")


@held.command("reject")
@click.argument("message_id", callback=lookup.post)
@click.option("--reason", required=True, help="Why the post is refused (recorded).")
@click.pass_context
def held_reject(ctx: click.Context, message_id: str, reason: str) -> None:
    """Refuse a held post: none of its copies is sent."""
    count = moderation.reject(app_of(ctx).db, message_id, audit.cli_actor(), reason)
    click.echo(f"rejected: {message_id} ({count} copies dropped)")

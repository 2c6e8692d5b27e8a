"""`relay queue [retry]`: the deliveries not yet sent, and a retry now of one.

Part of the `relay` command: importing this module adds the `queue` group to `cli`.
"""

from __future__ import annotations

import click

from relay.app import admin
from relay.cli import lookup
from relay.cli.context import app_of
from relay.cli.output import print_json, short_when, table
from relay.cli.root import cli
from relay.store import audit


@cli.group(invoke_without_command=True)
@click.option("--all", "show_all", is_flag=True, help="Include sent deliveries.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def queue(ctx: click.Context, show_all: bool, as_json: bool) -> None:
    """Show deliveries not yet sent (queued, active, deferred, held, failed)."""
    if ctx.invoked_subcommand is not None:
        return
    app = app_of(ctx)
    deliveries = admin.list_deliveries(app.db, include_sent=show_all)
    if as_json:
        print_json(deliveries)
        return
    rows = [
        [
            str(d.id),
            d.message_id,
            d.recipient,
            d.status,
            str(d.attempts),
            short_when(d.next_attempt_at),
            " ".join(filter(None, [d.last_code, d.last_reason])) or "-",
        ]
        for d in deliveries
    ]
    columns = ["id", "message", "recipient", "status", "attempts", "next attempt", "last result"]
    table("Deliveries", columns, rows)


@queue.command("retry")
@click.argument("delivery_id", type=int, callback=lookup.delivery)
@click.pass_context
def queue_retry(ctx: click.Context, delivery_id: int) -> None:
    """Queue a held, deferred or failed delivery for an attempt now."""
    app = app_of(ctx)
    view = admin.retry_delivery(app.db, delivery_id, audit.cli_actor())
    click.echo(f"delivery {view.id} to {view.recipient} queued for an attempt now")

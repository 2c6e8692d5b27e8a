"""`relay status`: each node, the scheduler, the queue and the next lift; exit 1 when
something is wrong and 2 when the database cannot be reached, so a monitor can call it.

Part of the `relay` command: importing this module adds `status` to `cli`.
"""

from __future__ import annotations

import dataclasses
import sys

import click
from sqlalchemy.exc import SQLAlchemyError

from relay.app import status as relay_status
from relay.cli.context import app_of
from relay.cli.output import print_json, short_when, table
from relay.cli.root import cli
from relay.model import utcnow


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def status(ctx: click.Context, as_json: bool) -> None:
    """Show whether the relay's nodes run and deliver; exit 1 if something is wrong."""
    app = app_of(ctx)
    try:
        seen = relay_status.status(app.db, app.settings, utcnow())
    except SQLAlchemyError as error:
        reason = (str(getattr(error, "orig", None) or error).splitlines() or [""])[0]
        if as_json:
            print_json({"ok": False, "problems": [f"cannot reach the database: {reason}"]})
        else:
            click.echo(f"error: cannot reach the database: {reason}", err=True)
        sys.exit(2)
    if as_json:
        print_json({"ok": seen.ok, **dataclasses.asdict(seen)})
    else:
        _show(seen)
    if not seen.ok:
        sys.exit(1)


def _show(seen: relay_status.Status) -> None:
    rows = [
        [
            n.name,
            "running" if n.running else ("stopped" if n.stopped_at else "silent"),
            "yes" if n.leads_scheduler else "-",
            short_when(n.heartbeat_at),
            short_when(n.last_claim_at),
            short_when(n.last_delivery_at),
            str(n.errors_last_hour),
        ]
        for n in seen.nodes
    ]
    columns = ["node", "state", "scheduler", "heartbeat", "last claim", "last sent", "errors/h"]
    table("Nodes", columns, rows)
    if seen.scheduler_leader is not None:
        click.echo(
            f"scheduler: {seen.scheduler_leader} since {short_when(seen.scheduler_leader_since)}"
        )
    queue = ", ".join(f"{state} {count}" for state, count in sorted(seen.queue.items()))
    click.echo(f"queue: {queue or 'empty'}")
    if seen.oldest_due_age_s is not None:
        click.echo(f"oldest due copy: waiting {int(seen.oldest_due_age_s)} s")
    if seen.next_lift:
        click.echo(f"next lift: {seen.next_lift['advisory']} at {seen.next_lift['lift_at']}")
    for problem in seen.problems:
        click.echo(f"problem: {problem}")
    click.echo("ok" if seen.ok else f"{len(seen.problems)} problem(s)")

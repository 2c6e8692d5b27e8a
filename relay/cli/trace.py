"""`relay trace FILE`: where a leaked text comes from (see relay/leaks/trace.py).

Part of the `relay` command: importing this module adds the command to `cli`.
"""

from __future__ import annotations

from typing import IO, Any

import click

from relay.cli.context import app_of
from relay.cli.output import print_json
from relay.cli.root import cli
from relay.leaks import trace


@cli.command("trace")
@click.argument("file", type=click.File("r", encoding="utf-8", errors="replace"))
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def trace_command(ctx: click.Context, file: IO[str], as_json: bool) -> None:
    """Name the advisory a leaked text (a whole message or an excerpt; - for stdin) comes
    from and, where a copy's reference or Message-ID survived, the recipient whose copy
    it was."""
    app = app_of(ctx)
    found = trace.trace(app.db, app.spool, file.read(), app.settings.list.domain)
    data: dict[str, list[dict[str, Any]]] = {
        "advisories": [
            {
                "advisory": m.advisory_id,
                "score": round(m.score, 3),
                "fingerprints": m.matched_fingerprints,
                "identifiers": list(m.identifiers),
                "sources": list(m.sources),
                "excerpts": len(m.excerpts),
            }
            for m in found.matches
        ],
        "copies": [
            {
                "delivery": c.delivery_id,
                "recipient": c.recipient,
                "advisory": c.advisory_id,
                "message": c.message_id,
                "evidence": c.evidence,
            }
            for c in found.copies
        ],
        "messages": [{"message": m, "advisory": a} for m, a in found.messages],
    }
    if as_json:
        print_json(data)
        return
    if not any(data.values()):
        click.echo("No advisory of this list matches the text, and no copy of ours is named.")
        return
    for row in data["advisories"]:
        click.echo(
            f"advisory {row['advisory']}: score {row['score']}, "
            f"{row['fingerprints']} fingerprints, identifiers "
            f"{', '.join(row['identifiers']) or '-'}"
        )
    for row in data["copies"]:
        click.echo(
            f"copy for {row['recipient']} (delivery {row['delivery']}, advisory "
            f"{row['advisory'] or '-'}), by {_evidence(row['evidence'])}"
        )
    for row in data["messages"]:
        click.echo(f"message {row['message']} (advisory {row['advisory'] or '-'})")


def _evidence(found: str) -> str:
    return f"its Message-ID {found}" if found.startswith("<") else f"its reference {found}"

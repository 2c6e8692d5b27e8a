"""`relay share ADVISORY ADDRESS --key FILE --for MEMBER`, `relay share list|revoke`:
need-to-know grants of an advisory to a person in a member's team.

Part of the `relay` command: importing this module adds the `share` group to `cli`. The
group takes either a subcommand or the advisory and the address straight away
(`relay share CVE-2026-1234 dev@distro.example ...` is `relay share add ...`).
"""

from __future__ import annotations

from pathlib import Path

import click

from relay.app import admin, grants
from relay.cli import lookup
from relay.cli.context import app_of
from relay.cli.output import print_json, table
from relay.cli.root import cli
from relay.core.logs import clean
from relay.core.times import format_when
from relay.store import audit


class _ShareGroup(click.Group):
    """A group whose first word, when not a subcommand, starts `share add`."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ctx.help_option_names:
            args = ["add", *args]
        return super().parse_args(ctx, args)


@cli.group(cls=_ShareGroup)
def share() -> None:
    """Need-to-know grants: an advisory shared with a person in a member's team.

    relay share ADVISORY ADDRESS --key FILE --for MEMBER sends the person the list's terms;
    the advisory's posts reach them once they accept by a signed reply.
    """


@share.command("add")
@click.argument("advisory_id", metavar="ADVISORY", callback=lookup.advisory)
@click.argument("address")
@click.option(
    "--key",
    "key_file",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="File with the person's public key(s); usable for encryption.",
)
@click.option(
    "--for",
    "member",
    required=True,
    metavar="MEMBER",
    help="The member who asks.",
    callback=lookup.member,
)
@click.pass_context
def share_add(
    ctx: click.Context, advisory_id: str, address: str, key_file: Path, member: str
) -> None:
    """Share ADVISORY with ADDRESS for MEMBER: the person first receives only the terms."""
    app = app_of(ctx)
    view = grants.share_by_admin(
        app.db,
        app.spool,
        app.crypto,
        app.settings,
        advisory_id=advisory_id,
        address=address,
        key_data=admin.read_key_file(key_file),
        member_address=member,
        actor=audit.cli_actor(),
    )
    click.echo(
        f"grant {view.id}: terms of {view.advisory_id} sent to {view.address} "
        f"(key(s) {', '.join(view.fingerprints)}); waiting for their signed acceptance"
    )


@share.command("list")
@click.option(
    "--advisory",
    "advisory_id",
    metavar="ID",
    help="Only this advisory's grants.",
    callback=lookup.advisory,
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def share_list(ctx: click.Context, advisory_id: str | None, as_json: bool) -> None:
    """Grants with their state (pending, accepted, revoked)."""
    found = grants.list_grants(app_of(ctx).db, advisory_id)
    if as_json:
        print_json(found)
        return
    rows = [
        [
            str(g.id),
            g.advisory_id,
            g.member,
            clean(g.address),
            g.state,
            format_when(g.created_at),
            _since(g),
        ]
        for g in found
    ]
    columns = ["id", "advisory", "for member", "person", "state", "shared", "since"]
    table("Need-to-know grants", columns, rows)


def _since(view: grants.GrantView) -> str:
    details: list[str] = []
    if view.accepted_at is not None:
        details.append(f"accepted {format_when(view.accepted_at)}")
    if view.revoked_at is not None:
        why = f": {clean(view.reason)}" if view.reason else ""
        details.append(f"revoked {format_when(view.revoked_at)} by {view.revoked_by}{why}")
    return "; ".join(details) or "-"


@share.command("revoke")
@click.argument("grant_id", type=int, metavar="ID", callback=lookup.grant)
@click.option("--reason", help="Why (kept in the audit trail).")
@click.pass_context
def share_revoke(ctx: click.Context, grant_id: int, reason: str | None) -> None:
    """Revoke a grant: the person's unsent copies are cancelled at once."""
    view, cancelled = grants.revoke(app_of(ctx).db, grant_id, audit.cli_actor(), reason)
    click.echo(
        f"grant {view.id} revoked: {view.address} gets nothing more of {view.advisory_id}; "
        f"{cancelled} unsent copies cancelled"
    )

"""`relay incidents [resolve]` and `relay incident report`: leaks of embargoed advisories.

Part of the `relay` command: importing this module adds its commands to `relay.cli.cli`,
with the same conventions (`error: ...` and exit 1 on a refusal, `--json` for scripts).
`incident` is the same group as `incidents`, so both `relay incident report` and
`relay incidents resolve` read as they are typed. Listings show how strongly a message
matched, never the excerpts: those travel only in the encrypted report.
"""

from __future__ import annotations

import click

from relay.app import incidents
from relay.cli import lookup
from relay.cli.context import app_of
from relay.cli.output import print_json, table
from relay.cli.root import cli
from relay.core.logs import clean
from relay.core.times import format_when
from relay.store import audit

_NOTE = click.option("--note", required=True, help="What happened (kept with the incident).")


@cli.group("incidents", invoke_without_command=True)
@click.option(
    "--member",
    "member",
    metavar="ADDRESS",
    help="Only this member's incidents.",
    callback=lookup.member,
)
@click.option(
    "--advisory",
    "advisory_id",
    metavar="ID",
    help="Only this advisory's incidents.",
    callback=lookup.advisory,
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def incidents_group(
    ctx: click.Context, member: str | None, advisory_id: str | None, as_json: bool
) -> None:
    """Leaks of embargoed advisories, each reported to the security contact (alias: incident)."""
    if ctx.invoked_subcommand is not None:
        return
    found = incidents.list_incidents(app_of(ctx).db, member=member, advisory_id=advisory_id)
    if as_json:
        print_json(found)
        return
    rows = [
        [
            str(i.id),
            format_when(i.at),
            i.advisory_id,
            i.member or "-",
            clean(i.sender),
            "\n".join(clean(r) for r in i.recipients),
            i.kind if i.score is None else f"{i.kind} ({i.score:.2f})",
            _resolved(i),
        ]
        for i in found
    ]
    columns = ["id", "when", "advisory", "member", "sender", "to whom", "kind", "resolved"]
    table("Incidents", columns, rows)


cli.add_command(incidents_group, name="incident")


def _resolved(view: incidents.IncidentView) -> str:
    if view.resolved_at is None:
        return "no"
    return f"{format_when(view.resolved_at)} by {view.resolved_by}: {clean(view.resolution)}"


@incidents_group.command("resolve")
@click.argument("incident_id", metavar="ID", type=int, callback=lookup.incident)
@_NOTE
@click.pass_context
def incident_resolve(ctx: click.Context, incident_id: int, note: str) -> None:
    """Close an incident with what was done about it (steps taken against future leaks)."""
    view = incidents.resolve(app_of(ctx).db, incident_id, note, audit.cli_actor())
    click.echo(f"incident {view.id} resolved")


@incidents_group.command("report")
@click.argument("advisory_id", metavar="ADVISORY", callback=lookup.advisory)
@click.option(
    "--member",
    "member",
    required=True,
    metavar="ADDRESS",
    help="Who leaked it.",
    callback=lookup.member,
)
@click.option(
    "--to",
    "recipients",
    required=True,
    multiple=True,
    metavar="ADDRESS",
    help="Who received it (repeatable).",
)
@click.option("--sender", metavar="ADDRESS", help="The address that sent it (default: --member).")
@_NOTE
@click.pass_context
def incident_report(
    ctx: click.Context,
    advisory_id: str,
    member: str,
    recipients: tuple[str, ...],
    sender: str | None,
    note: str,
) -> None:
    """Record a leak learnt of by other means; the security contact gets an encrypted report."""
    app = app_of(ctx)
    done = incidents.report_by_admin(
        app.db,
        app.spool,
        app.crypto,
        app.settings,
        advisory_id=advisory_id,
        member_address=member,
        recipients=recipients,
        note=note,
        actor=audit.cli_actor(),
        sender=sender,
    )
    i = done.incident
    click.echo(
        f"incident {i.id} recorded against {i.member} ({done.member_incidents} in total); "
        f"leak report queued for {app.settings.list.security_contact}"
    )
    if done.contact_problem:
        click.echo(f"warning: the report is held until then: {done.contact_problem}", err=True)

"""`relay member suspend|resume|show|update|sync`, `relay key import|refresh|check` and
`relay advisory status|report`: membership, key health and contributing back.

Part of the `relay` command: importing this module adds its commands to the `member`,
`key` and `advisory` groups, with the same conventions (`error: ...` and exit 1 on a
refusal, `--json` for scripts). Times print in UTC with the zone named.
"""

from __future__ import annotations

from dataclasses import asdict
from datetime import datetime
from pathlib import Path

import click

from relay.app import (
    admin,
    contributions,
    groups_file,
    key_refresh,
    keyhealth,
    members,
    membership,
)
from relay.app.membership import Move
from relay.cli import lookup
from relay.cli.advisory import advisory
from relay.cli.context import app_of as _app
from relay.cli.output import change_cell as _change_cell
from relay.cli.output import detail_cell as _detail_cell
from relay.cli.output import print_json as _print_json
from relay.cli.output import table as _table
from relay.cli.output import updated_cell as _updated
from relay.cli.roster import key, member
from relay.core.errors import RelayError
from relay.core.logs import clean
from relay.core.times import format_when
from relay.model import ContributionStatus, utcnow
from relay.store import audit

_JSON = click.option("--json", "as_json", is_flag=True, help="Print JSON.")
_REASON = click.option("--reason", required=True, help="Why (kept in the audit trail).")


def _when(value: datetime | None, never: str = "-") -> str:
    return never if value is None else format_when(value)


# Members


@member.command("suspend")
@click.argument("address", callback=lookup.member)
@_REASON
@click.pass_context
def member_suspend(ctx: click.Context, address: str, reason: str) -> None:
    """Stop all deliveries to a member, queued ones included, until it is resumed."""
    change = membership.change_state(_app(ctx).db, address, Move.SUSPEND, audit.cli_actor(), reason)
    click.echo(
        f"member suspended: {change.address}; {change.cancelled} unsent deliveries cancelled"
    )


@member.command("resume")
@click.argument("address", callback=lookup.member)
@_REASON
@click.pass_context
def member_resume(ctx: click.Context, address: str, reason: str) -> None:
    """Make a suspended member active again, or clear a bouncing mark (its alias works
    again); it receives what is posted from now on."""
    change = membership.change_state(_app(ctx).db, address, Move.RESUME, audit.cli_actor(), reason)
    click.echo(f"member resumed: {change.address}")


@member.command("show")
@click.argument("address", callback=lookup.member)
@_JSON
@click.pass_context
def member_show(ctx: click.Context, address: str, as_json: bool) -> None:
    """A member's record, keys (with expiry) and history."""
    app = _app(ctx)
    detail = members.member_detail(app.db, app.crypto, address)
    m = detail.member
    if as_json:
        _print_json({**asdict(m), "keys": detail.keys, "history": detail.history})
        return
    reach = "yes" if m.usable else f"NO, copies are held: {m.problem}"
    lines = [
        ("member", f"{m.address} ({clean(m.name)})"),
        ("state", m.state),
        ("reachable", reach if m.state == "active" else "-"),
        ("domains", ", ".join(m.domains) or "-"),
        ("vouched by", m.vouched_by or "-"),
        ("criteria", ", ".join(sorted(m.criteria)) or "-"),
        ("created", format_when(m.created_at)),
    ]
    for label, value in lines:
        click.echo(f"{label + ':':<12}{value}")
    click.echo()
    _table(
        "Keys",
        ["fingerprint", "status", "expires"],
        [[k.fingerprint, k.status, _when(k.expires_at, "never")] for k in detail.keys],
    )
    _table(
        "History",
        ["when", "who", "action", "subject", "change", "details"],
        [
            [format_when(r.at), r.actor, r.action, r.subject, _change_cell(r), _detail_cell(r)]
            for r in detail.history
        ],
    )


@member.command("update")
@click.argument("address", callback=lookup.member)
@click.option("--name", help="The distribution's name.")
@click.option("--domain", "domains", multiple=True, help="A domain its team uses (repeatable).")
@click.option(
    "--vouched-by", metavar="MEMBER", help="The member that vouched for it.", callback=lookup.member
)
@click.pass_context
def member_update(
    ctx: click.Context,
    address: str,
    name: str | None,
    domains: tuple[str, ...],
    vouched_by: str | None,
) -> None:
    """Change a member's name, domains (all of them, replacing the old) or voucher."""
    app = _app(ctx)
    if name is None and not domains and vouched_by is None:
        raise click.UsageError("nothing to change: give --name, --domain or --vouched-by")
    view = members.update_member(
        app.db,
        app.crypto,
        address,
        audit.cli_actor(),
        name=name,
        domains=list(domains) or None,
        vouched_by=vouched_by,
    )
    click.echo(f"member updated: {view.address}")


@member.command("sync")
@click.argument("groups_path", metavar="FILE", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--group", required=True, help="The group's name or email-id in FILE.")
@click.option("--apply", "apply", is_flag=True, help="Make the change (default: show it only).")
@_JSON
@click.pass_context
def member_sync(
    ctx: click.Context, groups_path: Path, group: str, apply: bool, as_json: bool
) -> None:
    """Make the members match a group of a Kubernetes groups file (groups.yaml).

    Without --apply, only shows what would change. With the group setting
    ReconcileMembers: "true", members missing from FILE are removed; otherwise they
    stay. Members new to the relay come without a key: they are added but nothing is
    sent to them until 'relay key import', and the security contact is told.
    """
    app = _app(ctx)
    try:
        data = groups_path.read_bytes()
    except OSError as exc:
        raise RelayError(f"cannot read {groups_path}: {exc.strerror or exc}") from None
    spec = groups_file.read_group(data, group, app.settings.list.address)
    if apply:
        plan = groups_file.apply_sync(
            app.db, app.spool, app.crypto, app.settings, spec, audit.cli_actor(), str(groups_path)
        )
    else:
        plan = groups_file.plan_sync(app.db, spec)
    if as_json:
        _print_json({**asdict(plan), "changes": plan.changes})
        return
    verb = "applied" if plan.applied else "dry run, nothing changed; add --apply to apply"
    mode = "file is the source of truth" if spec.reconcile else "members missing stay"
    click.echo(f"group {spec.email_id or spec.name} ({mode}): {verb}")
    for label, addresses in [
        ("added", plan.added),
        ("restored", plan.restored),
        ("removed", plan.removed),
        ("kept (not in the file)", plan.kept),
    ]:
        for address in addresses:
            click.echo(f"  {label}: {address}")
    click.echo(
        f"{len(plan.added)} added, {len(plan.restored)} restored, {len(plan.removed)} removed, "
        f"{len(plan.unchanged)} unchanged"
    )
    if plan.unreachable:
        click.echo(
            f"{len(plan.unreachable)} member(s) have no usable key and receive nothing until "
            "'relay key import FILE --member ADDRESS'; the security contact was told"
        )


# Keys


@key.command("import")
@click.argument(
    "key_file", metavar="FILE", type=click.Path(exists=True, dir_okay=False, path_type=Path)
)
@click.option(
    "--member",
    "address",
    required=True,
    help="The member the keys belong to.",
    callback=lookup.member,
)
@click.pass_context
def key_import(ctx: click.Context, key_file: Path, address: str) -> None:
    """Add keys to a member; each must be usable for encryption (RSA of 2048 bits or more).

    Copies held because the member had no usable key go back to the queue.
    """
    app = _app(ctx)
    data = admin.read_key_file(key_file)
    done = members.add_member_keys(app.db, app.crypto, address, data, audit.cli_actor())
    click.echo(f"key(s) added to {done.member.address}: {', '.join(done.added)}")
    if done.released:
        click.echo(f"{done.released} held delivery(ies) queued again")


@key.command("refresh")
@click.argument(
    "key_file", metavar="FILE", type=click.Path(exists=True, dir_okay=False, path_type=Path)
)
@click.pass_context
def key_refresh_command(ctx: click.Context, key_file: Path) -> None:
    """Bring keys the list holds up to date (a new expiry, a subkey, a revocation).

    Every key in the file must belong to a member, a sender or a grant; a revoked or
    expired key is taken in, and the relay stops encrypting to it.
    """
    app = _app(ctx)
    data = admin.read_key_file(key_file)
    done, released = key_refresh.refresh_keys(app.db, app.crypto, data, audit.cli_actor())
    for key_ in done:
        click.echo(f"key refreshed: {key_.fingerprint} ({key_.status}): {', '.join(key_.owners)}")
    if released:
        click.echo(f"{released} held delivery(ies) queued again")


@key.command("check")
@_JSON
@click.pass_context
def key_check(ctx: click.Context, as_json: bool) -> None:
    """Check every member key; remind members whose keys expire soon ([members]
    key_expiry_warning), once per key and expiry date, and send the security contact
    the list."""
    app = _app(ctx)
    report = keyhealth.check_keys(app.db, app.spool, app.crypto, app.settings, utcnow())
    if as_json:
        _print_json(report)
        return
    _table(
        "Member keys",
        ["member", "fingerprint", "status", "expires"],
        [[k.member, k.fingerprint, k.status, _when(k.expires_at, "never")] for k in report.keys],
    )
    for item in report.unreachable:
        click.echo(f"unreachable (copies held): {item.member}: {item.problem}")
    if report.reminded:
        click.echo(f"{len(report.reminded)} expiry reminder(s) queued")


# Contributing back


@advisory.command("status")
@click.argument("advisory_id", metavar="ID", callback=lookup.advisory)
@click.argument("address", metavar="MEMBER", callback=lookup.member)
@click.argument("status", type=click.Choice([s.value for s in ContributionStatus]))
@click.option("--text", help="What was found or done (required with issue-found).")
@click.pass_context
def advisory_status(
    ctx: click.Context, advisory_id: str, address: str, status: str, text: str | None
) -> None:
    """Record a member's contributing-back status for an advisory."""
    app = _app(ctx)
    change = contributions.set_member_status(
        app.db, advisory_id, address, status, text, audit.cli_actor()
    )
    if change.changed:
        click.echo(f"{change.advisory_id}: {change.member} {change.old} -> {change.new}")
    else:
        click.echo(f"{change.advisory_id}: {change.member} already {change.new}")


@advisory.command("report")
@click.argument("advisory_id", metavar="ID", callback=lookup.advisory)
@_JSON
@click.pass_context
def advisory_report(ctx: click.Context, advisory_id: str, as_json: bool) -> None:
    """Summary for the SRC: each member's contributing-back status and the totals."""
    app = _app(ctx)
    report = contributions.status_report(app.db, advisory_id)
    if as_json:
        _print_json({**asdict(report), "counts": report.counts})
        return
    lift = _when(report.lift_at, "not set")
    click.echo(
        f"advisory {report.advisory_id}: {clean(report.title)} ({report.state}, lift {lift})"
    )
    totals = ", ".join(f"{status} {n}" for status, n in report.counts.items())
    click.echo(f"members: {len(report.rows)}; {totals}")
    _table(
        "Contributing back",
        ["member", "status", "text", "updated"],
        [
            [r.member, r.status, clean(r.text or "-"), _updated(r.updated_at, r.updated_by)]
            for r in report.rows
        ],
    )

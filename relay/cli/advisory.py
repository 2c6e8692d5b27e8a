"""`relay advisory ...` and `relay audit`: embargoes and the audit trail from the command line.

Part of the `relay` command: importing this module adds its commands to `relay.cli.cli`,
with the same conventions (`error: ...` and exit 1 on a refusal, `--json` for scripts).
A lift time is the moment an advisory goes public, so every time printed names its zone:
UTC always, and `show` adds the administrator's own zone. WHEN is read by
`relay.core.times.parse_when`, which refuses anything that is not one definite instant.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import asdict
from datetime import datetime
from pathlib import Path
from typing import IO
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import click

from relay.app import advisories, advisory_admin, audit_chain
from relay.app.advisory_admin import AdvisoryChange, AdvisoryView
from relay.cli import lookup
from relay.cli.context import app_of
from relay.cli.output import change_cell, detail_cell, print_json, table, updated_cell
from relay.cli.root import cli
from relay.core.logs import clean
from relay.core.times import ACCEPTED_FORMS, countdown, format_when
from relay.model import AdvisoryState, utcnow
from relay.store import audit

_WHEN_EPILOG = "\b\n" + ACCEPTED_FORMS  # \b: click keeps the lines as they are


def _checked_zone(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is not None and not _is_zone(value):
        raise click.BadParameter(
            f"unknown time zone {value!r}: use an IANA name such as Europe/Berlin or UTC"
        )
    return value


def _is_zone(name: str) -> bool:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        return False
    return True


def local_zone() -> str:
    """This machine's IANA zone name ($TZ, /etc/localtime's link, /etc/timezone), else UTC."""
    candidates = [os.environ.get("TZ", "").removeprefix(":")]
    try:
        target = os.readlink("/etc/localtime")
    except OSError:
        target = ""
    name = target.partition("zoneinfo/")[2]
    candidates.append(name.removeprefix("posix/").removeprefix("right/"))
    with contextlib.suppress(OSError, UnicodeDecodeError):
        candidates.append(Path("/etc/timezone").read_text(encoding="utf-8").strip())
    return next((c for c in candidates if c and _is_zone(c)), "UTC")


_TZ_FOR_WHEN = click.option(
    "--tz",
    metavar="ZONE",
    callback=_checked_zone,
    help="IANA zone of a WHEN written without one, e.g. Europe/Berlin.",
)
_TZ_FOR_SHOW = click.option(
    "--tz",
    metavar="ZONE",
    callback=_checked_zone,
    help="Zone to show the lift time in besides UTC (default: this machine's zone).",
)
_JSON = click.option("--json", "as_json", is_flag=True, help="Print JSON.")


# Output


def _lift(value: datetime | None, zone: str | None = None) -> str:
    return "not set" if value is None else format_when(value, zone)


def _countdown(view: AdvisoryView, now: datetime) -> str | None:
    """Time to the lift of an embargoed advisory; None when there is nothing to count."""
    if view.state != AdvisoryState.EMBARGOED or view.lift_at is None:
        return None
    return countdown(view.lift_at, now)


def _title(view: AdvisoryView) -> str:
    """The title without the tags and ID a Subject brought (also in titles stored before
    those were taken off when the advisory was made); "" for none beside the ID."""
    return advisories.plain_title(view.title, view.id)


def _warn(warnings: list[str]) -> None:
    for warning in warnings:
        click.secho(warning, fg="yellow", err=True)


def _report_change(change: AdvisoryChange, zone: str | None, now: datetime) -> None:
    advisory = change.advisory
    if change.new is not None:
        click.echo(f"lift time: {_lift(change.new, zone)}, {countdown(change.new, now)}")
    if change.moved and change.old is not None:
        click.echo(f"previous lift time: {_lift(change.old, zone)}")
    if change.notice is not None:
        click.echo(f"members notified of the lift time (message {change.notice})")
    elif change.new is None:
        click.echo(f"no lift time yet: set one with 'relay advisory schedule {advisory.id}'")


# Commands


@cli.group()
def advisory() -> None:
    """Advisories and their embargoes: create, schedule, lift, cancel.

    Changes made here reach a running relay at its next embargo check
    ([embargo] check_interval); one that is stopped catches up when it starts.
    """


@advisory.command("create", epilog=_WHEN_EPILOG)
@click.argument("advisory_id", metavar="[ID]", required=False)
@click.option("--title", required=True, help="Short title, e.g. the vulnerability's name.")
@click.option("--lift", metavar="WHEN", help="Lift (public disclosure) time, if already agreed.")
@_TZ_FOR_WHEN
@click.pass_context
def advisory_create(
    ctx: click.Context, advisory_id: str | None, title: str, lift: str | None, tz: str | None
) -> None:
    """Create an embargoed advisory.

    ID is the SRC's own, e.g. CVE-2026-1234 or K8S-2026-0001; without one the
    relay assigns ADV-<year>-<n> and prints it. A lift time given
    here is announced to every member. Rules of the list's policy print as
    warnings, or refuse the advisory where the policy makes them hard.
    """
    app = app_of(ctx)
    now = utcnow()
    lift_at = None if lift is None else advisory_admin.read_lift_time(lift, tz, now)
    change = advisory_admin.create_advisory(
        app.db, app.spool, app.settings, advisory_id, title, lift_at, audit.cli_actor(), now
    )
    _warn(change.warnings)
    click.echo(f"advisory created: {change.advisory.id}")
    _report_change(change, tz, now)


@advisory.command("list")
@click.option("--all", "show_all", is_flag=True, help="Include lifted and cancelled advisories.")
@_JSON
@click.pass_context
def advisory_list(ctx: click.Context, show_all: bool, as_json: bool) -> None:
    """Embargoed advisories by lift time, with a countdown to each."""
    app = app_of(ctx)
    now = utcnow()
    views = advisory_admin.list_advisories(app.db, include_closed=show_all)
    if as_json:
        print_json([{**asdict(v), "countdown": _countdown(v, now)} for v in views])
        return
    rows = [
        [v.id, clean(_title(v)) or "-", v.state, _lift(v.lift_at), _countdown(v, now) or "-"]
        for v in views
    ]
    table("Advisories", ["id", "title", "state", "lift time", "countdown"], rows)


@advisory.command("show")
@click.argument("advisory_id", metavar="ID", callback=lookup.advisory)
@_TZ_FOR_SHOW
@_JSON
@click.pass_context
def advisory_show(ctx: click.Context, advisory_id: str, tz: str | None, as_json: bool) -> None:
    """State, lift time, history and deliveries of one advisory."""
    app = app_of(ctx)
    zone = tz or local_zone()
    now = utcnow()
    report = advisory_admin.advisory_report(app.db, advisory_id)
    a = report.advisory
    if as_json:
        local = None
        # A lift time kept at the calendar's edge (before the parser bounded them) has no
        # local time east of UTC: the UTC one stands alone.
        with contextlib.suppress(OverflowError):
            local = a.lift_at.astimezone(ZoneInfo(zone)) if a.lift_at else None
        print_json(
            {
                **asdict(a),
                "zone": zone,
                "lift_at_local": local,
                "countdown": _countdown(a, now),
                "history": report.history,
                "deliveries": report.deliveries,
                "statuses": report.statuses,
                "pending_changes": report.pending,
            }
        )
        return
    public = (
        f"marked for release at the lift ({a.public_text_chars} characters)"
        if a.public_release
        else "none (nothing is posted publicly at the lift)"
    )
    lines = [
        ("advisory", f"{a.id}: {clean(title)}" if (title := _title(a)) else a.id),
        ("state", a.state),
        ("lift time", _lift(a.lift_at, zone)),
    ]
    if (left := _countdown(a, now)) is not None:
        lines.append(("countdown", left))
    if a.lifted_at is not None:
        lines.append(("lifted at", format_when(a.lifted_at, zone)))
    lines += [
        ("created", f"{format_when(a.created_at)} by {clean(a.created_by)}"),
        ("public text", public),
    ]
    for label, value in lines:
        click.echo(f"{label + ':':<13}{value}")
    click.echo()
    table(
        "History",
        ["when", "who", "action", "change", "details"],
        [
            [format_when(r.at), r.actor, r.action, change_cell(r), detail_cell(r)]
            for r in report.history
        ],
    )
    if report.pending:
        table(
            "Waiting for confirmation (relay advisory confirm ID)",
            ["asked", "by", "lift time now", "asked for"],
            [
                [
                    format_when(p.requested_at),
                    p.requested_by,
                    _lift(p.old_lift_at, zone),
                    "lift now" if p.lift_at is None else _lift(p.lift_at, zone),
                ]
                for p in report.pending
            ],
        )
    table(
        "Deliveries",
        ["recipient", "message", "kind", "status", "attempts", "last code"],
        [
            [d.recipient, d.message_id, d.kind, d.status, str(d.attempts), d.last_code or "-"]
            for d in report.deliveries
        ],
    )
    table(
        "Contributing back",
        ["member", "status", "text", "updated"],
        [
            [
                r.member,
                r.status,
                clean(r.text or "-", limit=60),
                updated_cell(r.updated_at, r.updated_by),
            ]
            for r in report.statuses
        ],
    )


@advisory.command("schedule", epilog=_WHEN_EPILOG)
@click.argument("advisory_id", metavar="ID", callback=lookup.advisory)
@click.option("--lift", required=True, metavar="WHEN", help="The new lift time.")
@_TZ_FOR_WHEN
@click.option("--reason", help="Why (told to the members, kept in the audit trail).")
@click.pass_context
def advisory_schedule(
    ctx: click.Context, advisory_id: str, lift: str, tz: str | None, reason: str | None
) -> None:
    """Set or move the lift time and tell every member.

    Every active member gets an encrypted notice with the old and new time and the reason.
    Refused for a time in the past, for a lifted or cancelled advisory, and where
    the list's policy makes a broken rule hard; other broken rules print as warnings.
    """
    app = app_of(ctx)
    now = utcnow()
    lift_at = advisory_admin.read_lift_time(lift, tz, now)
    change = advisory_admin.schedule_advisory(
        app.db, app.spool, app.settings, advisory_id, lift_at, audit.cli_actor(), reason, now
    )
    _warn(change.warnings)
    if not change.moved:
        click.echo(f"lift time of {change.advisory.id} unchanged: {_lift(change.new, tz)}")
        return
    verb = "set" if change.old is None else "moved"
    click.echo(f"lift time of {change.advisory.id} {verb}")
    _report_change(change, tz, now)


@advisory.command("lift")
@click.argument("advisory_id", metavar="ID", callback=lookup.advisory)
@click.option("--reason", help="Why now, e.g. the embargo was broken (told to the members).")
@click.pass_context
def advisory_lift(ctx: click.Context, advisory_id: str, reason: str | None) -> None:
    """Lift now: members are told, the public text (if any) is sent."""
    app = app_of(ctx)
    done = advisory_admin.lift_advisory(
        app.db, app.spool, app.settings, advisory_id, audit.cli_actor(), reason
    )
    click.echo(f"advisory {done.advisory_id} lifted; {len(done.notices)} notice(s) queued")
    if done.released:
        click.echo(f"{done.released} delivery(ies) held for the embargo released")


@advisory.command("confirm")
@click.argument("advisory_id", metavar="ID", callback=lookup.advisory)
@click.option("--reason", help="Why (told to the members, kept in the audit trail).")
@click.pass_context
def advisory_confirm(ctx: click.Context, advisory_id: str, reason: str | None) -> None:
    """Make the earlier lift a signed post asked for (it waits for a second look).

    `relay advisory show ID` lists what waits. Members are told of the new lift time;
    an early lift (X-Lift: now) lifts at once.
    """
    app = app_of(ctx)
    pending, view = advisory_admin.confirm_change(
        app.db, app.spool, app.settings, advisory_id, audit.cli_actor(), reason
    )
    if pending.lift_at is None:
        click.echo(f"advisory {view.id} lifted, as {pending.requested_by} asked")
    else:
        moved = _lift(view.lift_at)
        click.echo(f"lift time of {view.id} moved to {moved}, as {pending.requested_by} asked")


@advisory.command("cancel")
@click.argument("advisory_id", metavar="ID", callback=lookup.advisory)
@click.option("--reason", help="Why (kept in the audit trail).")
@click.pass_context
def advisory_cancel(ctx: click.Context, advisory_id: str, reason: str | None) -> None:
    """Withdraw an advisory: no lift, no public release."""
    app = app_of(ctx)
    view = advisory_admin.cancel_advisory(app.db, advisory_id, audit.cli_actor(), reason)
    click.echo(f"advisory {view.id} cancelled")


@advisory.command("public-text")
@click.argument("advisory_id", metavar="ID", callback=lookup.advisory)
@click.argument("text_file", metavar="FILE", type=click.File("rb"))
@click.pass_context
def advisory_public_text(ctx: click.Context, advisory_id: str, text_file: IO[bytes]) -> None:
    """Set the text posted publicly at the lift.

    FILE is UTF-8 text ('-' reads stdin). It goes, in plaintext and only after
    the lift, to [embargo] public_addresses; setting it marks the advisory for
    public release.
    """
    app = app_of(ctx)
    view = advisory_admin.set_public_text(app.db, advisory_id, text_file.read(), audit.cli_actor())
    targets = ", ".join(app.settings.embargo.public_addresses) or "no address configured yet"
    click.echo(
        f"public text of {view.id} set ({view.public_text_chars} characters); "
        f"at the lift it goes to: {targets}"
    )


@cli.group("audit", invoke_without_command=True)
@click.option(
    "--advisory",
    "advisory_id",
    metavar="ID",
    help="Only this advisory's changes.",
    callback=lookup.advisory,
)
@click.option(
    "--limit", default=50, show_default=True, type=click.IntRange(min=1), help="Newest N rows."
)
@_JSON
@click.pass_context
def audit_trail(ctx: click.Context, advisory_id: str | None, limit: int, as_json: bool) -> None:
    """The audit trail, newest last: when, who, what, old and new value, and why.

    `relay audit verify` checks the trail's hash chain.
    """
    if ctx.invoked_subcommand is not None:
        return
    app = app_of(ctx)
    rows = advisory_admin.audit_trail(app.db, advisory_id, limit)
    if as_json:
        print_json(rows)
        return
    table(
        "Audit trail",
        ["when", "who", "action", "subject", "change", "details"],
        [
            [format_when(r.at), r.actor, r.action, r.subject, change_cell(r), detail_cell(r)]
            for r in rows
        ],
    )


@audit_trail.command("verify")
@_JSON
@click.pass_context
def audit_verify(ctx: click.Context, as_json: bool) -> None:
    """Check the audit trail's hash chain, every row, oldest first.

    Each row holds the SHA-256 of its content and of the row before it: a row edited,
    removed or added in the database directly breaks the chain there. Exit 1 names the
    first row that does not match. The head hash printed on success anchors the chain:
    kept somewhere else, it also shows rows cut off the end together with the head.
    """
    app = app_of(ctx)
    check = audit_chain.verify_chain(app.db)
    if as_json:
        print_json(check)
    else:
        click.echo(check.describe())
        if check.ok and check.head is not None:
            click.echo(f"head: {check.head}")
    if not check.ok:
        ctx.exit(1)

"""`relay application submit|vouch|approve|reject|list|show`: applications to join the list.

Part of the `relay` command: importing this module adds the `application` group, with the
same conventions as the others (`error: ...` and exit 1 on a refusal, `--json` for
scripts, times in UTC with the zone named).
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import click

from relay.app import admin, applications, approval
from relay.app.application_form import CRITERIA
from relay.app.applications import ApplicationView
from relay.cli import lookup
from relay.cli.context import app_of as _app
from relay.cli.output import change_cell as _change_cell
from relay.cli.output import detail_cell as _detail_cell
from relay.cli.output import print_json as _print_json
from relay.cli.output import table as _table
from relay.cli.root import cli
from relay.core.errors import RelayError
from relay.core.logs import clean
from relay.core.times import format_when
from relay.store import audit

_JSON = click.option("--json", "as_json", is_flag=True, help="Print JSON.")
_ID = click.argument("application_id", metavar="ID", type=int, callback=lookup.application)


@cli.group()
def application() -> None:
    """Applications to join the list: criteria, vouches, decision."""


def _json(view: ApplicationView) -> dict[str, Any]:
    return {**asdict(view), "missing_criteria": {n: CRITERIA[n] for n in view.missing}}


def _criteria_lines(view: ApplicationView) -> None:
    click.echo(f"answered:   {', '.join(view.answered) or 'none'}")
    if view.missing:
        click.echo("missing:")
        for number in view.missing:
            click.echo(f"  {number}. {CRITERIA[number]}")
    else:
        click.echo("missing:    none")


def _text(answer: str) -> str:
    """An answer as written, line breaks kept, control characters escaped."""
    return "\n".join(clean(line, 2000) for line in answer.splitlines())


@application.command("submit")
@click.argument("file", metavar="FILE", type=click.Path(dir_okay=False, path_type=Path))
@_JSON
@click.pass_context
def application_submit(ctx: click.Context, file: Path, as_json: bool) -> None:
    """Record an application written in the shape of the distributors application template.

    It may miss criteria (they are listed); it cannot be approved until they are answered.
    """
    try:
        text = file.read_bytes().decode("utf-8")
    except OSError as exc:
        raise RelayError(f"cannot read {file}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise RelayError(f"{file} is not UTF-8 (byte {exc.start})") from None
    view = applications.submit(_app(ctx).db, text, audit.cli_actor(), str(file))
    if as_json:
        _print_json(_json(view))
        return
    click.echo(
        f"application {view.id} submitted: {clean(view.distribution)} "
        f"({view.alias or 'no security alias'})"
    )
    _criteria_lines(view)


@application.command("vouch")
@_ID
@click.option(
    "--by",
    "member",
    required=True,
    metavar="MEMBER",
    help="The vouching member.",
    callback=lookup.member,
)
@click.pass_context
def application_vouch(ctx: click.Context, application_id: int, member: str) -> None:
    """Record that an active member vouches for an application."""
    done = applications.vouch_application(_app(ctx).db, application_id, member, audit.cli_actor())
    if done.changed:
        click.echo(f"application {done.application_id}: vouch by {done.member} recorded")
    else:
        click.echo(f"application {done.application_id}: {done.member} had already vouched")


@application.command("approve")
@_ID
@click.option(
    "--key",
    "key_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="The member's public key(s); without it the member receives nothing until "
    "'relay key import'.",
)
@click.option(
    "--send-active",
    is_flag=True,
    help="Also queue for the new member the posts of advisories still under embargo.",
)
@_JSON
@click.pass_context
def application_approve(
    ctx: click.Context, application_id: int, key_file: Path | None, send_active: bool, as_json: bool
) -> None:
    """Create the member an application asks for; needs every criterion and a vouch."""
    app = _app(ctx)
    key_data = admin.read_key_file(key_file) if key_file is not None else None
    done = approval.approve(
        app.db,
        app.crypto,
        app.settings,
        app.spool,
        application_id,
        audit.cli_actor(),
        key_data=key_data,
        send_active=send_active,
    )
    if as_json:
        _print_json(done)
        return
    member = done.member
    click.echo(f"application {done.application.id} approved: member {member.address} added")
    if not member.usable:
        click.echo(
            f"{member.address} has no usable key: nothing is sent to it until "
            f"'relay key import FILE --member {member.address}'; the security contact was told"
        )
    for sent in done.sent:
        click.echo(f"  {sent.advisory_id}: {len(sent.message_ids)} embargoed post(s) queued")


@application.command("reject")
@_ID
@click.option("--reason", required=True, help="Why (kept in the audit trail).")
@click.pass_context
def application_reject(ctx: click.Context, application_id: int, reason: str) -> None:
    """Close an application without creating a member."""
    view = applications.reject(_app(ctx).db, application_id, audit.cli_actor(), reason)
    click.echo(f"application {view.id} rejected")


@application.command("list")
@_JSON
@click.pass_context
def application_list(ctx: click.Context, as_json: bool) -> None:
    """Every application, newest first, with missing criteria and vouches."""
    views = applications.list_applications(_app(ctx).db)
    if as_json:
        _print_json([_json(v) for v in views])
        return
    _table(
        "Applications",
        ["id", "distribution", "alias", "state", "missing", "vouched by", "submitted"],
        [
            [
                str(v.id),
                clean(v.distribution),
                v.alias or "-",
                v.state,
                ", ".join(v.missing) or "-",
                ", ".join(x.member for x in v.vouches) or "-",
                format_when(v.submitted_at),
            ]
            for v in views
        ],
    )


@application.command("show")
@_ID
@_JSON
@click.pass_context
def application_show(ctx: click.Context, application_id: int, as_json: bool) -> None:
    """One application: answers as written, missing criteria, vouches and history."""
    detail = applications.application_detail(_app(ctx).db, application_id)
    view = detail.application
    if as_json:
        _print_json({**_json(view), "history": detail.history})
        return
    click.echo(f"application {view.id}: {clean(view.distribution)} ({view.state})")
    click.echo(f"alias:      {view.alias or '-'}")
    click.echo(f"submitted:  {format_when(view.submitted_at)} by {view.submitted_by}")
    if view.decided_at is not None:
        why = f": {clean(view.reason)}" if view.reason else ""
        click.echo(f"decided:    {format_when(view.decided_at)} by {view.decided_by}{why}")
    _criteria_lines(view)
    click.echo()
    _table(
        "Answers",
        ["criterion", "answer"],
        [[f"{n}. {CRITERIA[n]}", _text(view.answers.get(n) or "-")] for n in CRITERIA],
    )
    _table(
        "Vouches",
        ["member", "when", "recorded by"],
        [[v.member, v.at, v.actor] for v in view.vouches],
    )
    _table(
        "History",
        ["when", "who", "action", "change", "details"],
        [
            [format_when(r.at), r.actor, r.action, _change_cell(r), _detail_cell(r)]
            for r in detail.history
        ],
    )

"""Arguments and options that name something the relay holds: each is checked as it is
read, so every command refuses an unknown advisory, member, sender, incident, delivery,
post, grant or application with the same words and exit code ("error: no advisory
'NOPE-1'", exit 1), whether the command would change it or only list what it has.

Use one as a click callback: `@click.argument("advisory_id", callback=lookup.advisory)`.
An option left out (None) is not checked. The check is `relay.app.known.require`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import click

from relay.app import known
from relay.cli.context import app_of

V = TypeVar("V", str, int)


def _checked(kind: known.Kind) -> Callable[[click.Context, click.Parameter, V | None], V | None]:
    def check(ctx: click.Context, param: click.Parameter, value: V | None) -> V | None:
        if value is not None and not ctx.resilient_parsing:
            known.require(app_of(ctx).db, kind, value)
        return value

    return check


advisory = _checked("advisory")
member = _checked("member")
sender = _checked("sender")
incident = _checked("incident")
delivery = _checked("delivery")
post = _checked("post")
grant = _checked("grant")
application = _checked("application")

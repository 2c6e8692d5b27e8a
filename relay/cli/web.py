"""`relay web`: the operator's console alone (pages and the HTTP API), without the SMTP
edge and the dispatcher; `relay serve` runs it too when `[web] enabled` is true.

Part of the `relay` command: importing this module adds `web` to `cli`.
"""

from __future__ import annotations

import logging

import click

from relay.cli.context import app_of
from relay.cli.root import cli


@cli.command()
@click.pass_context
def web(ctx: click.Context) -> None:
    """Run the console on [web] host:port (HTTPS with tls_cert/tls_key) until SIGINT or SIGTERM.

    Log in with an administrator made by 'relay admin add'.
    """
    app = app_of(ctx)
    app.console.setLevel(logging.INFO)
    from relay.web import server  # the web stack loads only for this command

    server.serve_console(app.settings)

"""The `relay` command: the administrator's command groups, a thin shell over `relay.app`.

Owns: argument parsing, output (tables for people, `--json` for scripts), exit codes.
May import: every package below it (`app`, `runners`, `leaks`, `store`, `core`, `model`).
`root` holds the group, the setup commands and the exit codes, `context` what a command
needs (settings, database, keyring, logs), `output` the tables, JSON and cells every group
prints; each other module adds one group of commands to `root.cli` when imported, which
this package does. Commands call `relay.app` only: no module here runs a query.
"""

from relay.cli import (  # noqa: F401  (importing a module registers its commands)
    admins,
    advisory,
    applications,
    deliveries,
    held,
    incidents,
    key,
    keyring,
    members,
    node,
    roster,
    share,
    status,
    trace,
    web,
)
from relay.cli.root import cli, main

__all__ = ["cli", "main"]

"""The `relay` command: the administrator's command groups, a thin shell over `relay.app`.

Owns: argument parsing, output (tables for people, `--json` for scripts), exit codes.
May import: every package below it (`app`, `runners`, `leaks`, `store`, `core`, `model`).
`root` holds the group, its shared output helpers and the setup commands; each other
module adds one group of commands to it when imported, which this package does.
"""

from relay.cli import (  # noqa: F401  (importing a module registers its commands)
    advisory,
    applications,
    held,
    incidents,
    members,
    share,
    trace,
)
from relay.cli.root import cli, main

__all__ = ["cli", "main"]

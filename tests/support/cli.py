"""An administrator at the `relay` command, for CLI tests: a set-up relay and a runner
that fails the test on an unexpected exit code or a traceback."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from click.testing import CliRunner, Result
from sqlalchemy import func, select

from relay.app import admin
from relay.app.members import add_member
from relay.cli.root import cli
from relay.core.config import Settings, load
from relay.core.database import Database
from tests.support import template
from tests.support.keys import KeyFactory
from tests.support.relayhome import write_config

ACTOR = "cli:setup"


@dataclass
class CliRelay:
    config: Path
    settings: Settings
    db: Database

    def __call__(self, *args: str, code: int = 0, **kwargs: Any) -> Result:
        result = CliRunner().invoke(cli, ["--config", str(self.config), *args], **kwargs)
        assert result.exit_code == code, (result.stdout, result.stderr)
        assert "Traceback" not in result.output
        return result

    def json(self, *args: str, **kwargs: Any) -> Any:
        return json.loads(self(*args, "--json", **kwargs).stdout)

    def count(self, model: type) -> int:
        with self.db.transaction() as s:
            return s.scalar(select(func.count()).select_from(model)) or 0


R = TypeVar("R", bound=CliRelay)

# What `relay init` creates.
_INIT_PARTS = ("database", "gnupg", "spool", "outbox")


def _init(settings: Settings) -> str:
    return admin.init_relay(settings, ACTOR).fingerprint


def set_up(
    root: Path,
    keys: KeyFactory,
    members: list[tuple[str, str, str]],
    *,
    extra: str = "",
    kind: type[R] = CliRelay,  # type: ignore[assignment]
) -> R:
    """`relay init` and `member add` for each (key name, address, member name)."""
    config = write_config(root, extra=extra)
    settings = load(config)
    # A copy of what `relay init` left in the session's template, else `relay init` here.
    if template.copy_set_up("initialised", settings, root, _INIT_PARTS, _init) is None:
        _init(settings)
    db = admin.open_database(settings)
    crypto = admin.open_keyring(settings)
    admin.unseal(db, crypto)
    for key_name, address, name in members:
        key = keys.make(key_name, address)
        add_member(db, crypto, settings, address, name, key.public, ACTOR)
    return kind(config, settings, db)

"""What every command prints: rich tables for people, JSON for scripts, and the cells the
groups share (times, audit rows).

Tables print their cells as typed (never as rich markup) and fold long ones; piped output
is 200 columns wide, so a script reading it does not depend on a terminal's width.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, is_dataclass
from datetime import datetime
from typing import Any

import click
from rich.console import Console
from rich.table import Table
from rich.text import Text

from relay.core.times import format_when
from relay.store.audit import AuditView


def print_json(data: Any) -> None:
    """`data` as indented JSON: times in ISO 8601, dataclasses as objects."""
    click.echo(json.dumps(data, default=_json_default, indent=2, ensure_ascii=False))


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if is_dataclass(value) and not isinstance(value, type):
        return asdict(value)
    raise TypeError(type(value).__name__)


def table(title: str, columns: list[str], rows: list[list[str]]) -> None:
    """A table, or "TITLE: none" when there are no rows."""
    if not rows:
        click.echo(f"{title}: none")
        return
    shown = Table(title=title, title_justify="left")
    for name in columns:
        shown.add_column(name, overflow="fold")
    for row in rows:
        # Text(), not markup: a name such as "[red]" must print as typed.
        shown.add_row(*(Text(cell) for cell in row))
    wide = None if sys.stdout.isatty() else 200
    Console(width=wide, soft_wrap=False).print(shown)


def short_when(value: datetime | None) -> str:
    """'2026-12-03 16:00 UTC' (no seconds), or '-'."""
    return value.strftime("%Y-%m-%d %H:%M %Z") if value else "-"


def updated_cell(at: datetime | None, by: str | None) -> str:
    """When and by whom a row last changed, or '-'."""
    return "-" if at is None else f"{format_when(at)} by {by}"


def change_cell(row: AuditView) -> str:
    """An audit row's old and new value."""
    if row.old is None and row.new is None:
        return "-"
    return f"{_shown(row.old)} -> {_shown(row.new)}"


def detail_cell(row: AuditView) -> str:
    """An audit row's reason and details, one per line."""
    parts = [f"reason: {row.reason}"] if row.reason else []
    parts += [f"{k}: {_shown(v)}" for k, v in row.detail.items() if v is not None]
    return "\n".join(parts) or "-"


def _shown(value: Any) -> str:
    """An audit value for people: lift times in UTC with the zone, the rest as recorded."""
    if value is None:
        return "-"
    if isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            return value
        return format_when(moment) if moment.tzinfo is not None else value
    return json.dumps(value, ensure_ascii=False)

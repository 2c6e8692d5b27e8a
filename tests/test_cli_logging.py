"""The log file of a `relay` command: an internal error (exit 70, "see the log") always
leaves its traceback in the file, also one raised before the command read its
configuration, and `[log] format = "json"` writes the file as JSON lines.

Real config, database (SQLite or PostgreSQL) and gpg; the failures are real ones: a table
of the database gone, a file that is not there.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import click
import pytest
from click.testing import CliRunner, Result
from sqlalchemy import text

from relay.cli.context import app_of
from relay.cli.root import cli
from tests.support.cli import CliRelay, set_up
from tests.support.keys import KeyFactory


@pytest.fixture
def early_failure(tmp_path: Path) -> Iterator[str]:
    """A command that fails before it touches the configuration, as a command does whose
    argument parsing raises: it reads a file that is not there."""
    missing = tmp_path / "not-there.txt"

    @cli.command("fail-early")
    @click.pass_context
    def fail_early(ctx: click.Context) -> None:
        missing.read_text(encoding="utf-8")
        click.echo(app_of(ctx).settings.list.address)  # never reached

    try:
        yield "fail-early"
    finally:
        cli.commands.pop("fail-early")


def _internal_error(result: Result, kind: str) -> None:
    assert result.exit_code == 70, (result.stdout, result.stderr)
    assert result.stderr.strip().splitlines() == [f"error: internal error ({kind}); see the log"]
    assert "Traceback" not in result.output


def test_an_error_before_the_configuration_is_read_is_in_the_default_log_file(
    tmp_path: Path, keys: KeyFactory, early_failure: str
) -> None:
    relay: CliRelay = set_up(tmp_path, keys, [])
    result = CliRunner().invoke(cli, ["--config", str(relay.config), early_failure])
    _internal_error(result, "FileNotFoundError")
    log = (tmp_path / "state" / "relay.log").read_text(encoding="utf-8")
    assert f"internal error in {early_failure}" in log
    assert "Traceback" in log and "FileNotFoundError" in log and "not-there.txt" in log


def test_an_error_before_the_configuration_is_read_is_in_the_log_file_given(
    tmp_path: Path, keys: KeyFactory, early_failure: str
) -> None:
    relay: CliRelay = set_up(tmp_path, keys, [])
    log_file = tmp_path / "logs" / "cli.log"
    result = CliRunner().invoke(
        cli, ["--config", str(relay.config), "--log-file", str(log_file), early_failure]
    )
    _internal_error(result, "FileNotFoundError")
    log = log_file.read_text(encoding="utf-8")
    assert "Traceback" in log and "FileNotFoundError" in log
    assert not (tmp_path / "state" / "relay.log").exists()


def test_help_opens_no_log_file(tmp_path: Path, keys: KeyFactory) -> None:
    relay: CliRelay = set_up(tmp_path, keys, [])
    log_file = tmp_path / "help.log"
    result = CliRunner().invoke(
        cli, ["--config", str(relay.config), "--log-file", str(log_file), "advisory", "--help"]
    )
    assert result.exit_code == 0
    assert not log_file.exists()


def _drop_advisories(relay: CliRelay) -> None:
    """A database whose advisories table is gone (a botched manual change): the schema
    version still reads current, so the command fails inside."""
    with relay.db.transaction() as s:
        s.execute(text("ALTER TABLE advisories RENAME TO advisories_gone"))


def test_a_failing_schedule_leaves_its_traceback_in_the_log(
    tmp_path: Path, keys: KeyFactory
) -> None:
    relay: CliRelay = set_up(tmp_path, keys, [])
    relay("advisory", "create", "ADV-2026-0042", "--title", "A flaw")
    _drop_advisories(relay)
    result = CliRunner().invoke(
        cli,
        ["--config", str(relay.config), "advisory", "schedule", "ADV-2026-0042", "--lift", "+30d"],
    )
    assert result.exit_code == 70, (result.stdout, result.stderr)
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error: internal error (") and line.endswith("); see the log")
    log = (tmp_path / "state" / "relay.log").read_text(encoding="utf-8")
    assert "internal error in advisory" in log
    assert "Traceback" in log and "advisories" in log.split("internal error in advisory")[1]


def test_json_format_writes_the_log_file_as_json_lines(tmp_path: Path, keys: KeyFactory) -> None:
    relay: CliRelay = set_up(tmp_path, keys, [], extra='[log]\nformat = "json"\n')
    relay("advisory", "create", "ADV-2026-0043", "--title", "A flaw")
    _drop_advisories(relay)
    result = CliRunner().invoke(cli, ["--config", str(relay.config), "advisory", "list"])
    assert result.exit_code == 70
    log = tmp_path / "state" / "relay.log"
    lines = [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines()]
    created = [line for line in lines if line.get("step") == "advisory.created"]
    assert len(created) == 1
    assert created[0]["advisory"] == "ADV-2026-0043"
    assert created[0]["logger"] == "relay.admin" and created[0]["level"] == "INFO"
    assert str(created[0]["time"]).endswith("+00:00")
    (failed,) = [line for line in lines if line["level"] == "ERROR"]
    assert failed["message"] == "internal error in advisory"
    assert "Traceback" in str(failed["traceback"])
    # The title is the advisory's content: never in the log.
    assert "A flaw" not in log.read_text(encoding="utf-8")

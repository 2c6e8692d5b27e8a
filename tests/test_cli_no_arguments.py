"""`relay` alone shows what it can do and succeeds; asking for help succeeds; a command
it does not know is a usage error (2)."""

from __future__ import annotations

from click.testing import CliRunner

from relay.cli.root import cli


def test_relay_alone_prints_its_help_and_exits_0() -> None:
    result = CliRunner().invoke(cli, [], prog_name="relay")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("Usage: relay [OPTIONS] COMMAND [ARGS]...")
    assert "advisory" in result.stdout and "member" in result.stdout
    assert result.stdout == CliRunner().invoke(cli, ["--help"], prog_name="relay").stdout


def test_help_exits_0_and_an_unknown_command_exits_2() -> None:
    assert CliRunner().invoke(cli, ["--help"]).exit_code == 0
    assert CliRunner().invoke(cli, ["-h"]).exit_code == 0
    unknown = CliRunner().invoke(cli, ["nope"])
    assert unknown.exit_code == 2 and "No such command 'nope'" in unknown.stderr

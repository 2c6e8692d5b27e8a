"""`relay status` tells the truth: no node running is a problem (exit 1); a running relay
shows as a running node that leads the scheduler (exit 0); a stopped one is stopped."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from relay.cli import cli
from tests.support.keys import KeyFactory
from tests.support.relayhome import RelayThread, distributors
from tests.support.smtpsink import SmtpSink


def _status(config: Path) -> tuple[int, dict]:
    result = CliRunner().invoke(cli, ["--config", str(config), "status", "--json"])
    assert "Traceback" not in result.output
    return result.exit_code, json.loads(result.stdout)


def test_status_follows_the_node_through_its_life(
    tmp_path: Path, keys: KeyFactory, sink: SmtpSink
) -> None:
    home = distributors(tmp_path, keys, sink.port)
    code, seen = _status(home.config_path)
    assert (code, seen["ok"]) == (1, False)
    assert "no node is running" in seen["problems"]

    with RelayThread(home.settings):
        code, seen = _status(home.config_path)
        assert (code, seen["ok"], seen["problems"]) == (0, True, [])
        (node,) = seen["nodes"]
        assert node["running"] and node["leads_scheduler"]
        assert seen["scheduler_leader"] == node["name"]

    code, seen = _status(home.config_path)
    assert code == 1
    (node,) = seen["nodes"]
    assert not node["running"] and node["stopped_at"] is not None
    assert seen["scheduler_leader"] is None

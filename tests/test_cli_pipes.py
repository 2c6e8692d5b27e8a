"""A reader that leaves early (`relay queue | head -1`) is no error of the relay's: the
command ends quietly with exit 0, not with "internal error; see the log"."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("command", [["advisory", "list"], ["advisory", "list", "--json"]])
def test_a_reader_that_has_left_is_no_internal_error(tmp_path: Path, command: list[str]) -> None:
    shutil.copy(ROOT / "config.example.toml", tmp_path / "relay.toml")
    relay = [sys.executable, "-m", "relay", "--config", str(tmp_path / "relay.toml")]
    subprocess.run([*relay, "init"], check=True, capture_output=True, timeout=120)
    # The reader is gone before the command writes anything: its first write fails.
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        done = subprocess.run(
            [*relay, *command], stdout=write_end, stderr=subprocess.PIPE, timeout=120
        )
    finally:
        os.close(write_end)
    stderr = done.stderr.decode()
    assert done.returncode == 0, stderr
    assert "internal error" not in stderr and "Traceback" not in stderr
    log = tmp_path / "var" / "relay.log"
    assert not log.exists() or "BrokenPipeError" not in log.read_text()

"""The systemd unit in contrib/: systemd's own parser accepts it, and its sandbox is the
one documented (a dedicated user, state in one writable folder, no privileges)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from relay.core.gpg import stop_agent
from tests.support import backends
from tests.support.cluster import Cluster
from tests.support.databases import on_postgresql
from tests.support.keys import KeyFactory
from tests.support.smtpsink import SmtpSink

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "contrib" / "embargo-relay.service"
SYSUSERS = ROOT / "contrib" / "embargo-relay.sysusers"
INSTALLED = "/opt/embargo-relay/.venv/bin/relay"
STATE = "/var/lib/embargo-relay"


def _directives(path: Path) -> dict[str, list[str]]:
    """Each `[Section] Key=` as "Section.Key", with every value it is given."""
    found: dict[str, list[str]] = {}
    section = ""
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        key, sep, value = line.partition("=")
        assert sep, f"not a directive: {raw!r}"
        found.setdefault(f"{section}.{key.strip()}", []).append(value.strip())
    return found


def test_the_unit_runs_the_relay_as_its_own_user_in_a_sandbox() -> None:
    unit = _directives(UNIT)

    def one(key: str) -> str:
        (value,) = unit[f"Service.{key}"]
        return value

    assert one("ExecStart") == f"{INSTALLED} --config /etc/embargo-relay/relay.toml serve"
    assert one("Type") == "exec"
    assert one("User") == "embargo-relay"
    assert "Service.DynamicUser" not in unit
    assert one("StateDirectory") == "embargo-relay"
    assert one("ReadWritePaths") == STATE
    assert one("ExecReload") == "/bin/kill -HUP $MAINPID"
    assert one("Restart") == "on-failure"
    assert one("UMask") == "0077"
    assert one("CapabilityBoundingSet") == ""
    for key in (
        "NoNewPrivileges",
        "PrivateTmp",
        "PrivateDevices",
        "ProtectHome",
        "ProtectKernelTunables",
        "ProtectKernelModules",
        "ProtectKernelLogs",
        "ProtectControlGroups",
        "LockPersonality",
        "MemoryDenyWriteExecute",
    ):
        assert one(key) == "yes", key
    assert one("ProtectSystem") == "strict"
    assert one("RestrictAddressFamilies").split() == ["AF_UNIX", "AF_INET", "AF_INET6"]
    assert "@system-service" in unit["Service.SystemCallFilter"]
    assert unit["Install.WantedBy"] == ["multi-user.target"]


def test_the_system_user_has_the_state_folder_as_its_home() -> None:
    lines = [
        line.split()
        for line in SYSUSERS.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert [(f[0], f[1]) for f in lines] == [("u", "embargo-relay")]
    assert STATE in lines[0]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze here")
def test_systemd_accepts_the_unit(tmp_path: Path) -> None:
    """`systemd-analyze verify` with ExecStart pointed at this checkout's relay (verify
    wants the binary to exist). It does not look the user up, and it reports a directive
    it cannot parse on stderr without failing, so stderr must stay empty."""
    relay = ROOT / ".venv" / "bin" / "relay"
    if not relay.exists():
        pytest.skip("no .venv/bin/relay in this checkout")
    text = UNIT.read_text(encoding="utf-8")
    start = f"ExecStart={INSTALLED} "
    assert text.count(start) == 1
    copy = tmp_path / "embargo-relay.service"
    copy.write_text(text.replace(start, f"ExecStart={relay} "), encoding="utf-8")
    done = subprocess.run(
        ["systemd-analyze", "verify", str(copy)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr.strip() == ""


def _agents_of(home: Path) -> list[int]:
    """The gpg-agent processes serving the GnuPG home `home`, by their command lines."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:  # gone meanwhile
            continue
        homes = {str(home).encode(), str(home.resolve()).encode()}
        if Path(argv[0].decode(errors="replace")).name == "gpg-agent" and homes & set(argv):
            found.append(int(proc.name))
    return found


@backends.gnupg_only("no gpg-agent runs for the Sequoia backend")
def test_relay_serve_stopped_with_sigterm_leaves_no_gpg_agent(
    tmp_path: Path, keys: KeyFactory
) -> None:
    with (
        SmtpSink() as sink,
        Cluster(
            tmp_path, keys, f"127.0.0.1:{sink.port}", count=1, postgresql=on_postgresql()
        ) as cluster,
    ):
        home = cluster.settings.gnupg.home
        stop_agent(home)  # the test's own agent (it opened the data key) goes first
        assert _agents_of(home) == []
        cluster.start()
        code, _ = cluster.post(cluster.signed_post("Embargoed details.\n"))
        assert code == 250
        sink.wait_for(len(cluster.member_addresses), timeout=60)
        # Signing each copy with the list key ran gpg-agent for the relay's home.
        assert _agents_of(home) != []
        cluster.terminate()
        assert _agents_of(home) == []

"""Several real `relay serve` processes on one database: the cluster's fault tests and
its benchmark.

Each node has a folder of its own (config, spool, log, GnuPG home) and its own node name
and SMTP port (0: the kernel picks one, read back from the "listening ... port=" log line).
Node 0's GnuPG home is made first, with the list key and the members' and sender's public
keys; the other nodes get copies of it, as an administrator provisions a second machine.
The database is a throwaway PostgreSQL one (or, for one node, a SQLite file). The test
stops every node it starts (`close`, also on failure).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from click.testing import CliRunner, Result
from sqlalchemy import select

from relay.cli import cli
from relay.core import config as relay_config
from relay.core.database import Database
from relay.core.gpg import stop_agent
from relay.core.keyrings import open_keyring
from relay.model import Delivery, Member, MemberKey, Sender, SenderKey
from relay.store import data_keys
from tests.support import backends, databases
from tests.support.keys import KeyFactory, Keyring
from tests.support.mail import pgp_mime_signed, text_entity
from tests.support.relayhome import CONTACT, LIST, smtp_post

SENDER = "src@example.org"
# gpg's run-time files, never copied into another node's home.
_NOT_COPIED = ("S.*", ".#lk*", "*.lock", "random_seed")
T = TypeVar("T")


@dataclass(frozen=True)
class Options:
    """What the nodes' configuration says; short times, so faults play out in seconds."""

    failover_after: str = "6s"
    poll_interval: str = "0.2s"
    lease_for: str = "10m"  # long: a dead node's copies come back by failover, not expiry
    min_backoff: str = "1s"
    max_backoff: str = "2s"
    connections: int = 4
    workers: int = 2


def _config(folder: Path, name: str, url: str, smarthost: str, options: Options) -> Path:
    path = folder / "relay.toml"
    path.write_text(
        f"""
[list]
address = "{LIST}"
name = "Test distributors"
security_contact = "{CONTACT}"

[smtp]
host = "127.0.0.1"
port = 0
max_connections_per_ip = 64  # every client is on 127.0.0.1

[delivery]
smarthost = "{smarthost}"
workers = {options.workers}
connections = {options.connections}
min_backoff = "{options.min_backoff}"
max_backoff = "{options.max_backoff}"
poll_interval = "{options.poll_interval}"
lease_for = "{options.lease_for}"
connect_timeout = "5s"

[storage]
database_url = "{url}"
spool_dir = "state/spool"

{backends.config_section()}
[embargo]
reminders = []

[cluster]
node_name = "{name}"
failover_after = "{options.failover_after}"
""",
        encoding="utf-8",
    )
    return path


@dataclass
class NodeProcess:
    """One `relay serve` process, started, killed and started again by the test."""

    name: str
    folder: Path
    config: Path
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    port: int = 0
    started: int = 0  # how many times
    _offset: int = 0  # where this start's lines begin in the log

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def launch(self) -> None:
        """Start the process; `wait_listening` waits for its SMTP port."""
        assert not self.running, f"{self.name} runs already"
        self._offset = self.log.stat().st_size if self.log.exists() else 0
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "relay", "--config", str(self.config), "serve"],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=dict(os.environ, PYTHONUNBUFFERED="1"),
            )
        self.started += 1

    def wait_listening(self, timeout: float = 60) -> NodeProcess:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.log.open("rb") as text:
                text.seek(self._offset)
                for line in text.read().decode(errors="replace").splitlines():
                    if "listening" in line and "port=" in line:
                        self.port = int(line.rsplit("port=", 1)[1].split()[0])
                        return self
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.name} exited early:\n{self.log.read_text()}")
            time.sleep(0.05)
        self.kill()
        raise AssertionError(f"{self.name} did not start:\n{self.log.read_text()}")

    def kill(self) -> None:
        """SIGKILL: no orderly stop, leases and leased copies left behind."""
        if self.running:
            assert self.proc is not None
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(30)

    def terminate(self, timeout: float = 60) -> int:
        """SIGTERM and wait for the orderly stop; its exit code."""
        assert self.proc is not None
        if self.running:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
                raise
        return self.proc.returncode


@dataclass
class Cluster:
    """`count` nodes on one database, serving `members` members and the sender SENDER."""

    root: Path
    keys: KeyFactory
    smarthost: str
    count: int = 2
    members: int = 2
    postgresql: bool = True
    options: Options = field(default_factory=Options)

    def __post_init__(self) -> None:
        self.url = self._database()
        self.nodes = [self._node(n) for n in range(self.count)]
        self.sender = self.keys.make("src", SENDER)
        # Keys are shared by name across a test session: the same member, the same key.
        self.member_keys = [
            self.keys.make(f"cluster{n}", f"security@cluster{n}.example")
            for n in range(self.members)
        ]
        self.list_fpr = self._set_up(self.nodes[0])
        for node in self.nodes[1:]:
            shutil.copytree(
                self.nodes[0].folder / backends.keyring_folder(),
                node.folder / backends.keyring_folder(),
                ignore=shutil.ignore_patterns(*_NOT_COPIED),
            )
        self.settings = relay_config.load(self.nodes[0].config)
        self.db = Database(self.url)
        crypto = open_keyring(self.settings.gnupg)
        data_keys.unwrap(self.db, crypto)
        list_public = crypto.export_public(self.list_fpr)
        self._client = Keyring(
            self.root / "clients" / "src", self.sender, trusted_public=(list_public,)
        )

    @property
    def member_addresses(self) -> list[str]:
        return [k.address for k in self.member_keys]

    # Set-up

    def _database(self) -> str:
        if not self.postgresql:
            assert self.count == 1, "SQLite serves one node"
            return f"sqlite:///{self.root.resolve() / 'relay.db'}"
        name = f"{databases.PREFIX}cl{hashlib.sha1(str(self.root).encode()).hexdigest()[:12]}"
        databases.create(name)
        return databases.url_of(name)

    def _node(self, n: int) -> NodeProcess:
        name = f"node{n}"
        folder = self.root / name
        folder.mkdir(parents=True)
        config = _config(folder, name, self.url, self.smarthost, self.options)
        return NodeProcess(name, folder, config, folder / "serve.log")

    def _set_up(self, node: NodeProcess) -> str:
        """The schema, the list key and data key, the sender and the members (each with
        its key in node 0's keyring); the list key's fingerprint."""
        settings = relay_config.load(node.config)
        db = Database(self.url)
        try:
            db.upgrade()
            crypto = open_keyring(settings.gnupg)
            fingerprint = crypto.generate_key("Test distributors", LIST)
            data_keys.ensure(db, crypto, fingerprint)
            everyone = [self.sender, *self.member_keys]
            crypto.import_keys(b"\n".join(k.public for k in everyone))  # one gpg run
            with db.transaction() as s:
                s.add(Sender(address=SENDER, keys=[SenderKey(fingerprint=self.sender.fingerprint)]))
                for key in self.member_keys:
                    member = Member(address=key.address, name=key.name)
                    member.keys = [MemberKey(fingerprint=key.fingerprint)]
                    s.add(member)
        finally:
            db.dispose()
        stop_agent(settings.gnupg.keyring_path)  # before the copies: no sockets of a live agent
        return fingerprint

    # Running

    def start(self, *which: int) -> None:
        """Start these nodes (all by default) at once, and wait until each listens."""
        chosen = [self.nodes[n] for n in which or range(self.count)]
        for node in chosen:
            node.launch()
        for node in chosen:
            node.wait_listening()

    def terminate(self, *which: int) -> None:
        """SIGTERM these nodes at once and wait for their orderly stops (exit 0)."""
        chosen = [self.nodes[n] for n in which or range(self.count)]
        for node in chosen:
            assert node.proc is not None
            node.proc.send_signal(signal.SIGTERM)
        for node in chosen:
            # Wait only: a second SIGTERM after the orderly stop has closed the event loop
            # would find Python's default handler and kill the process (exit -15).
            assert node.proc is not None
            assert node.proc.wait(60) == 0, node.log.read_text()

    def leader(self) -> NodeProcess:
        """The node `relay status` names as the scheduler's leader."""
        _, seen = self.status()
        return next(n for n in self.nodes if n.name == seen["scheduler_leader"])

    def close(self) -> None:
        """Stop every node (orderly when it still answers), then the database handle."""
        for node in self.nodes:
            if node.running:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    node.terminate(timeout=30)
        self.db.dispose()

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # Posting

    def signed_post(self, body: str, *, subject: str = "[EMBARGOED] cluster test") -> bytes:
        """A post signed by the sender, PGP/MIME; each call a new signature."""
        return pgp_mime_signed(
            self._client,
            self.sender.fingerprint,
            text_entity(body),
            subject=subject,
            sender=SENDER,
            to=LIST,
        )

    def post(self, data: bytes, node: int = 0) -> tuple[int, str]:
        return asyncio.run(smtp_post(self.nodes[node].port, data))

    def post_many(
        self, posts: Sequence[tuple[int, bytes]], clients: int = 16
    ) -> list[tuple[int, str]]:
        """Post (node, data) pairs from `clients` concurrent SMTP clients; the replies in order."""

        async def all_of() -> list[tuple[int, str]]:
            gate = asyncio.Semaphore(clients)

            async def one(node: int, data: bytes) -> tuple[int, str]:
                async with gate:
                    return await smtp_post(self.nodes[node].port, data)

            return list(await asyncio.gather(*(one(n, d) for n, d in posts)))

        return asyncio.run(all_of())

    # Looking

    def cli(self, *args: str, node: int = 0) -> Result:
        return CliRunner().invoke(cli, ["--config", str(self.nodes[node].config), *args])

    def status(self) -> tuple[int, dict[str, Any]]:
        """`relay status --json`: its exit code and what it printed."""
        result = self.cli("status", "--json")
        assert "Traceback" not in result.output, result.output
        return result.exit_code, json.loads(result.stdout)

    def deliveries(self, recipients: Iterable[str] | None = None) -> list[Delivery]:
        with self.db.transaction() as s:
            query = select(Delivery).order_by(Delivery.id)
            if recipients is not None:
                query = query.where(Delivery.recipient.in_(list(recipients)))
            return list(s.execute(query).scalars())


def wait_until(check: Callable[[], T], what: str, timeout: float = 60, every: float = 0.1) -> T:
    """Poll `check` until it returns something true; that value."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(every)

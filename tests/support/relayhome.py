"""A complete relay in a temporary folder: config file, database, spool, keyring, keys."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from relay.core import config as relay_config
from relay.core.database import Database
from relay.core.keyrings import open_keyring
from relay.core.sealing import Sealer, attach, new_key, sealer_for
from relay.model import Member, MemberKey, Sender, SenderKey
from relay.runners.service import Relay
from relay.store import data_keys
from relay.store.spool import Spool
from tests.support import backends, databases, template
from tests.support.keys import KeyFactory, Keyring, TestKey

LIST = "distributors@example.org"
CONTACT = "security@example.org"


def write_config(
    root: Path, *, smarthost: str | None = None, extra: str = "", backend: str = backends.BACKEND
) -> Path:
    target = f'smarthost = "{smarthost}"' if smarthost else 'outbox = "outbox"'
    path = root / "relay.toml"
    path.write_text(
        f"""
[list]
address = "{LIST}"
name = "Test distributors"
security_contact = "{CONTACT}"

[smtp]
host = "127.0.0.1"
port = 0
max_message_size = 1048576
max_recipients = 3

[delivery]
{target}
workers = 2
min_backoff = "1m"
max_backoff = "1h"
queue_lifetime = "5d"
poll_interval = "0.2s"
connect_timeout = "5s"

[storage]
database_url = "{databases.database_for(root)}"
spool_dir = "state/spool"

{backends.config_section(backend=backend)}
{extra}
""",
        encoding="utf-8",
    )
    return path


def _migrate(settings: relay_config.Settings) -> str:
    """An empty database at the newest revision; no list key (its fingerprint is "")."""
    db = Database(settings.storage.database_url)
    try:
        db.upgrade()
    finally:
        db.dispose()  # closing the last connection checkpoints the WAL into the file
    return ""


def _migrate_and_make_key(settings: relay_config.Settings) -> str:
    """An empty database at the newest revision, the list key, and the data key wrapped to
    it (as `relay init` leaves them); the list key's fingerprint."""
    _migrate(settings)
    crypto = open_keyring(settings.gnupg)
    fingerprint = crypto.generate_key("Test distributors", LIST)
    db = Database(settings.storage.database_url)
    try:
        data_keys.ensure(db, crypto, fingerprint)
    finally:
        db.dispose()
    return fingerprint


def migrated_database(root: Path, settings: relay_config.Settings) -> Database:
    """The database of `settings` (from `write_config(root)`) at the newest revision: a copy
    of the session's migrated one, else migrated here. For tests that need no keys."""
    if template.copy_set_up("database", settings, root, ("database",), _migrate) is None:
        _migrate(settings)
    db = Database(settings.storage.database_url)
    # No list key to wrap a data key to: a key of its own seals this database's text.
    sealer = Sealer()
    sealer.add(*new_key())
    attach(db.engine, sealer)
    return db


def open_sealed(settings: relay_config.Settings) -> Database:
    """Another handle on a relay's database, as another process opens it: with the data
    key unwrapped by the list key."""
    db = Database(settings.storage.database_url)
    data_keys.unwrap(db, open_keyring(settings.gnupg))
    return db


def another_handle(db: Database) -> Database:
    """A second engine on the same database, sealing with the same data keys."""
    second = Database(db.url)
    attach(second.engine, sealer_for(db.engine.dialect))
    return second


class RelayHome:
    def __init__(
        self,
        root: Path,
        keys: KeyFactory,
        *,
        smarthost: str | None = None,
        extra: str = "",
        backend: str = backends.BACKEND,
    ) -> None:
        self.root = root
        self.keys = keys
        self.config_path = write_config(root, smarthost=smarthost, extra=extra, backend=backend)
        self.settings = relay_config.load(self.config_path)
        # A copy of the session's template (made once), else made here.
        self.list_fpr = template.copy_set_up(
            "migrated", self.settings, root, ("database", "gnupg"), _migrate_and_make_key
        ) or _migrate_and_make_key(self.settings)
        self.db = Database(self.settings.storage.database_url)
        self.crypto = open_keyring(self.settings.gnupg)
        data_keys.unwrap(self.db, self.crypto)
        self.spool = Spool(self.db)
        self.list_public = self.crypto.export_public(self.list_fpr)

    def add_sender(self, key: TestKey, address: str | None = None) -> None:
        fprs = self.crypto.import_keys(key.public)
        with self.db.transaction() as s:
            sender = Sender(address=(address or key.address).lower())
            sender.keys = [SenderKey(fingerprint=f) for f in fprs]
            s.add(sender)

    def add_member(self, key: TestKey | None, address: str | None = None) -> None:
        fprs = self.crypto.import_keys(key.public) if key else []
        with self.db.transaction() as s:
            member = Member(address=(address or key.address).lower(), name=address or key.name)
            member.keys = [MemberKey(fingerprint=f) for f in fprs]
            s.add(member)

    def client(self, key: TestKey) -> Keyring:
        """The mail client of a key's owner: its secret key plus the list's public key."""
        return Keyring(self.root / "clients" / key.name, key, trusted_public=(self.list_public,))


class RelayThread:
    """Runs a Relay on its own event loop in a thread, like aiosmtpd's Controller."""

    def __init__(
        self,
        settings: relay_config.Settings,
        *,
        clock: Callable[[], datetime] | None = None,
        dispatch: bool = True,
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.dispatch = dispatch
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.relay: Relay | None = None

    def __enter__(self) -> RelayThread:
        self.thread.start()

        async def start() -> Relay:
            kwargs = {"clock": self.clock} if self.clock else {}
            relay = Relay(self.settings, **kwargs)
            await relay.start(dispatch=self.dispatch)
            return relay

        self.relay = asyncio.run_coroutine_threadsafe(start(), self.loop).result(30)
        return self

    @property
    def port(self) -> int:
        assert self.relay is not None
        return self.relay.port

    def lift(self, advisory_id: str, reason: str = "published") -> None:
        """Lift an advisory now, as `relay advisory lift` does, and wake the dispatcher."""
        from relay.app import embargo

        assert self.relay is not None
        embargo.lift_now(
            self.relay.db,
            self.relay.spool,
            self.settings,
            advisory_id,
            actor="cli:test",
            reason=reason,
            now=datetime.now(UTC),
        )
        self.relay.dispatcher.wake()

    def run(self, coro, timeout: float = 60):  # type: ignore[no-untyped-def]
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def __exit__(self, *exc: object) -> None:
        if self.relay is not None:
            self.run(self.relay.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


async def smtp_post(port: int, data: bytes, sender: str = "src@example.org") -> tuple[int, str]:
    """Post to the relay over real SMTP; returns the final reply (code, text)."""
    import aiosmtplib

    smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, timeout=30)
    await smtp.connect()
    try:
        _, reply = await smtp.sendmail(sender, [LIST], data)
        return 250, reply
    except aiosmtplib.SMTPResponseException as exc:
        return exc.code, exc.message
    finally:
        smtp.close()


def distributors(
    root: Path, keys: KeyFactory, port: int, *, members: int = 2, extra: str = ""
) -> RelayHome:
    """A relay delivering to the smarthost on `port`, with the SRC sender
    src@example.org and members security@distro<N>.example."""
    home = RelayHome(root, keys, smarthost=f"127.0.0.1:{port}", extra=extra)
    home.add_sender(keys.make("src", "src@example.org"))
    for n in range(members):
        home.add_member(keys.make(f"distro{n}", f"security@distro{n}.example"))
    return home


class OffsetClock:
    """The relay's notion of now: real time, jumped ahead by a test instead of waiting."""

    def __init__(self) -> None:
        self.offset = timedelta(0)

    def __call__(self) -> datetime:
        return datetime.now(UTC) + self.offset

    def jump_to(self, moment: datetime) -> None:
        self.offset = moment - datetime.now(UTC)

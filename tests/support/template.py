"""Set-up made once per test session and copied into each test's relay folder.

Migrating a database and generating a list key take a quarter of a second, and most tests
need both. A session builds each kind of set-up once, in a template folder laid out like a
test's (same config writer, same relative paths); each test gets fresh copies of the files,
so its database, spool and keyring are its own and tests stay independent of their order.

gpg derives an agent's socket from the path of its home (in the home itself, or under
/run/user keyed by a hash of the path), so a copy at a new path never talks to the
template's agent. That agent is stopped as soon as the key exists, and sockets, locks and
the random seed are not copied.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from relay.core.config import Settings, load
from relay.core.gpg import stop_agent
from tests.support import databases

# gpg's run-time files: agent sockets, lock files, the seed it rewrites at every run.
_NOT_COPIED = ("S.*", ".#lk*", "*.lock", "random_seed", "relay.toml")


def _sqlite_file(settings: Settings) -> Path | None:
    url = settings.storage.database_url
    return Path(url.removeprefix("sqlite:///")) if url.startswith("sqlite:////") else None


# The files a set-up may create, as the settings place them.
_PARTS: dict[str, Callable[[Settings], Path | None]] = {
    "database": _sqlite_file,
    "gnupg": lambda s: s.gnupg.keyring_path,
    "spool": lambda s: s.storage.spool_dir,
    "outbox": lambda s: s.delivery.outbox,
}


def _layout(settings: Settings, root: Path, parts: Iterable[str]) -> tuple[object, ...] | None:
    """The list's identity and where each part lives within `root`; None if one is outside."""
    found: list[object] = [settings.list.address, settings.list.name]
    root = root.resolve()
    for part in parts:
        if part == "database" and databases.name_of(settings.storage.database_url):
            found.append(databases.POSTGRESQL)  # cloned by the server, not copied
            continue
        path = _PARTS[part](settings)
        if path is None or not path.is_relative_to(root):
            return None
        found.append(path.relative_to(root))
    return tuple(found)


@dataclass(frozen=True)
class Template:
    root: Path
    parts: tuple[str, ...]
    layout: tuple[object, ...]
    gnupg: Path
    list_fpr: str
    database: str | None  # the PostgreSQL database cloned into each copy's, if any

    def copy_to(self, settings: Settings, root: Path) -> str | None:
        """Copy the template's files into `root` and return the list key's fingerprint; None,
        with nothing copied, when `settings` would put the files elsewhere."""
        if _layout(settings, root, self.parts) != self.layout:
            return None
        # shutil.copy: new files with new times, as if this test had made them.
        shutil.copytree(
            self.root,
            root,
            ignore=shutil.ignore_patterns(*_NOT_COPIED),
            copy_function=shutil.copy,
            dirs_exist_ok=True,
        )
        if self.database is not None:
            name = databases.name_of(settings.storage.database_url)
            assert name is not None
            databases.clone(self.database, name)
        return self.list_fpr


class Templates:
    """A session's templates, each built the first time a test asks for it."""

    def __init__(self, root: Path, write_config: Callable[[Path], Path]) -> None:
        self.root = root
        self._write_config = write_config
        self._built: dict[str, Template] = {}

    def get(self, kind: str, parts: tuple[str, ...], build: Callable[[Settings], str]) -> Template:
        """The template `kind`: `build(settings)` creates `parts` and returns the list key."""
        if kind not in self._built:
            root = self.root / kind
            root.mkdir(parents=True)
            settings = load(self._write_config(root))
            layout = _layout(settings, root, parts)
            assert layout is not None, f"template {kind}: its files must live in its folder"
            databases.ensure(settings.storage.database_url)
            fingerprint = build(settings)
            stop_agent(settings.gnupg.keyring_path)
            database = databases.name_of(settings.storage.database_url)
            self._built[kind] = Template(
                root, parts, layout, settings.gnupg.keyring_path, fingerprint, database
            )
        return self._built[kind]

    def databases(self) -> tuple[str, ...]:
        return tuple(t.database for t in self._built.values() if t.database is not None)

    def stop_agents(self) -> None:
        for template in self._built.values():
            stop_agent(template.gnupg)


_session: Templates | None = None


def start_session(templates: Templates) -> None:
    global _session
    _session = templates


def session_databases() -> tuple[str, ...]:
    """The PostgreSQL databases of the session's templates (kept until the session ends)."""
    return _session.databases() if _session is not None else ()


def end_session() -> None:
    global _session
    if _session is not None:
        _session.stop_agents()
    _session = None


def copy_set_up(
    kind: str,
    settings: Settings,
    root: Path,
    parts: tuple[str, ...],
    build: Callable[[Settings], str],
) -> str | None:
    """Give the relay in `root` a copy of the session's set-up `kind` (the list key's
    fingerprint), or None when it must set up on its own: outside a test session (the
    benchmarks) or when its settings put the files elsewhere. Either way its database
    exists on return (a PostgreSQL one is only named until then)."""
    copied = None if _session is None else _session.get(kind, parts, build).copy_to(settings, root)
    if copied is None:
        databases.ensure(settings.storage.database_url)
    return copied

"""Shared fixtures: real keys (generated once per run with the real gpg)."""

from __future__ import annotations

from pathlib import Path

import pytest

from relay.core.gpg import stop_agent
from tests.support import backends, databases, template
from tests.support.keys import KeyFactory
from tests.support.relayhome import write_config
from tests.support.smtpsink import SmtpSink


def pytest_report_header() -> str:
    return f"relays on: {backends.BACKEND} backend, {databases.BACKEND} database"


@pytest.fixture(scope="session")
def keys(tmp_path_factory: pytest.TempPathFactory) -> KeyFactory:
    """Generate keys on demand: keys.make('alice'), keys.expired('old'), keys.revoked('gone')."""
    return KeyFactory(Path(tmp_path_factory.mktemp("keys")))


@pytest.fixture
def sink():
    """A capturing SMTP server on 127.0.0.1 (the relay's smarthost in most tests)."""
    with SmtpSink() as running:
        yield running


def _stop_agents(root: Path) -> None:
    """Stop the gpg-agents gpg started for the GnuPG homes under `root` (a home whose
    agent ran has a private-keys-v1.d folder): tests stop the servers they start."""
    for keys_dir in root.rglob("private-keys-v1.d"):
        stop_agent(keys_dir.parent)


@pytest.fixture(autouse=True)
def _agents_stopped(request: pytest.FixtureRequest):
    used = request.getfixturevalue("tmp_path") if "tmp_path" in request.fixturenames else None
    yield
    if used is not None:
        _stop_agents(used)
    databases.drop_made(keep=template.session_databases())


@pytest.fixture(scope="session", autouse=True)
def _all_agents_stopped(tmp_path_factory: pytest.TempPathFactory):
    yield
    _stop_agents(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="session", autouse=True)
def _set_up_templates(tmp_path_factory: pytest.TempPathFactory):
    """Relay folders copy the set-up made once here (tests/support/template.py)."""
    template.start_session(template.Templates(tmp_path_factory.mktemp("templates"), write_config))
    yield
    template.end_session()
    databases.drop_all()

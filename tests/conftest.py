"""Shared fixtures: real keys (generated once per run with the real gpg)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.keys import KeyFactory
from tests.support.smtpsink import SmtpSink


@pytest.fixture(scope="session")
def keys(tmp_path_factory: pytest.TempPathFactory) -> KeyFactory:
    """Generate keys on demand: keys.make('alice'), keys.expired('old'), keys.revoked('gone')."""
    return KeyFactory(Path(tmp_path_factory.mktemp("keys")))


@pytest.fixture
def sink():
    """A capturing SMTP server on 127.0.0.1 (the relay's smarthost in most tests)."""
    with SmtpSink() as running:
        yield running

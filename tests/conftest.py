"""Shared fixtures: real keys (generated once per run with the real gpg)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.keys import KeyFactory


@pytest.fixture(scope="session")
def keys(tmp_path_factory: pytest.TempPathFactory) -> KeyFactory:
    """Generate keys on demand: keys.make('alice'), keys.expired('old'), keys.revoked('gone')."""
    return KeyFactory(Path(tmp_path_factory.mktemp("keys")))

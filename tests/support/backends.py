"""Which OpenPGP backend the relays of this test session use.

`RELAY_TEST_BACKEND=sequoia` runs the suite with `[gnupg] backend = "sequoia"` (`make test`
runs it on both); the default is GnuPG. Members, senders and other parties outside the relay
keep using gpg, as people do.
"""

from __future__ import annotations

import os

import pytest

GNUPG = "gnupg"
SEQUOIA = "sequoia"
BACKEND = os.environ.get("RELAY_TEST_BACKEND", GNUPG)
if BACKEND not in (GNUPG, SEQUOIA):
    raise RuntimeError(f"RELAY_TEST_BACKEND must be {GNUPG} or {SEQUOIA}, not {BACKEND!r}")


def config_section(folder: str = "state", backend: str = BACKEND) -> str:
    """The `[gnupg]` section of a test relay's configuration, for `backend` (by default this
    session's)."""
    return (
        f'[gnupg]\nbackend = "{backend}"\nhome = "{folder}/gnupg"\nkeyring = "{folder}/keyring"\n'
    )


def keyring_folder(folder: str = "state") -> str:
    """The folder (relative to the relay's) holding the relay's keys in this session."""
    return f"{folder}/gnupg" if BACKEND == GNUPG else f"{folder}/keyring"


def gnupg_only(reason: str) -> pytest.MarkDecorator:
    """For a test of how the relay uses the gpg program itself (its home, its agent)."""
    return pytest.mark.skipif(BACKEND != GNUPG, reason=f"GnuPG backend only: {reason}")


def sequoia_difference(reason: str) -> pytest.MarkDecorator:
    """A difference of the Sequoia backend the README lists: the test fails exactly so there,
    until pysequoia closes it."""
    return pytest.mark.xfail(BACKEND == SEQUOIA, strict=True, reason=reason)

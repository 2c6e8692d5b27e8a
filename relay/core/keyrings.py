"""The list's keyring, as `[gnupg] backend` chooses it: GnuPG (relay/core/gpg.py) or
Sequoia (relay/core/sequoia.py), both behind `Crypto`.

The Sequoia keyring's secret-key file may be encrypted under a passphrase, read from the
first line of `passphrase_file` or from the environment variable `passphrase_env`; a
passphrase file others on the machine can read is refused, as ssh refuses such a key.
"""

from __future__ import annotations

import os
import stat

from relay.core.config import GnupgSettings
from relay.core.crypto import Crypto
from relay.core.errors import ConfigError
from relay.core.gpg import GnuPG
from relay.core.secret_files import first_line
from relay.core.sequoia import Sequoia


def open_keyring(settings: GnupgSettings) -> Crypto:
    """The configured backend on its keyring."""
    if settings.backend == "sequoia":
        return Sequoia(settings.keyring, read_passphrase(settings))
    return GnuPG(settings.home, settings.binary)


def read_passphrase(settings: GnupgSettings) -> str | None:
    """The Sequoia key file's passphrase, or None when none is configured."""
    if settings.passphrase_env is not None:
        value = os.environ.get(settings.passphrase_env, "")
        if not value:
            raise ConfigError(
                f"[gnupg] passphrase_env: the environment variable {settings.passphrase_env}"
                " is not set or empty"
            )
        return value
    path = settings.passphrase_file
    if path is None:
        return None
    try:
        mode = path.stat().st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise ConfigError(
                f"[gnupg] passphrase_file {path} is open to other users (mode"
                f" {stat.S_IMODE(mode):04o}); make it 0600 or 0400"
            )
        value = first_line(path)
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "strerror", None) or exc
        raise ConfigError(f"[gnupg] passphrase_file: cannot read {path}: {reason}") from None
    if not value:
        raise ConfigError(f"[gnupg] passphrase_file {path}: the first line is empty")
    return value

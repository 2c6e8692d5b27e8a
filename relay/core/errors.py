"""Errors a user may see. Anything else is a bug and is logged, not shown raw."""


class RelayError(Exception):
    """An error with a message fit for an administrator."""


class ConfigError(RelayError):
    """The configuration file is missing or invalid."""


class KeyProblem(RelayError):
    """A key cannot be imported or used."""


class CryptoError(RelayError):
    """The OpenPGP backend refused an operation; the message is never sent in plaintext instead."""

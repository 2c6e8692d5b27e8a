"""STARTTLS on the SMTP edge: the server's SSL context, and the holder that swaps it.

`server_context` builds the context of `[smtp] tls_cert` and `tls_key` (TLS 1.2 or later);
a file that cannot be read, holds no certificate or key, or a key that does not match the
certificate is a `ConfigError` naming the file. `ServerTLS` holds the context in use:
`reload` (SIGHUP) builds a new one from the same paths and swaps it in only if it loads,
so new sessions get the new certificate, open sessions keep theirs, and a bad new file
keeps the old one (logged as an error). Sessions read `ServerTLS.context` at STARTTLS.
"""

from __future__ import annotations

import logging
import ssl
from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization

from relay.core.config import SmtpSettings
from relay.core.errors import ConfigError
from relay.core.logs import event

log = logging.getLogger("relay.tls")

MINIMUM_VERSION = ssl.TLSVersion.TLSv1_2


def _read(key: str, path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"smtp.{key}: cannot read {path}: {exc.strerror or exc}") from None


def _no_passphrase() -> bytes:
    # Called by OpenSSL only for an encrypted key: never prompt on the terminal.
    raise ConfigError("encrypted")


def server_context(cert: Path, key: Path) -> ssl.SSLContext:
    """The edge's SSL context for the PEM chain `cert` (leaf first) and its key `key`."""
    try:
        chain = x509.load_pem_x509_certificates(_read("tls_cert", cert))
    except ValueError:
        raise ConfigError(f"smtp.tls_cert: {cert} holds no PEM certificate") from None
    try:
        private = serialization.load_pem_private_key(_read("tls_key", key), password=None)
    except TypeError:
        raise ConfigError(
            f"smtp.tls_key: the private key in {key} is protected by a passphrase; "
            "the relay needs it without one (readable by the relay's user alone)"
        ) from None
    except (ValueError, UnsupportedAlgorithm):
        raise ConfigError(f"smtp.tls_key: {key} holds no PEM private key") from None
    if chain[0].public_key() != private.public_key():
        raise ConfigError(
            f"smtp.tls_key: the private key in {key} does not match the certificate in {cert} "
            "(the first certificate of tls_cert must be the server's own)"
        )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = MINIMUM_VERSION
    context.options |= ssl.OP_NO_RENEGOTIATION | ssl.OP_NO_COMPRESSION
    try:
        context.load_cert_chain(cert, key, password=_no_passphrase)
    except (ssl.SSLError, ConfigError, OSError) as exc:  # the files changed since, or odd ones
        raise ConfigError(f"smtp.tls_cert, tls_key: cannot load {cert} and {key}: {exc}") from None
    leaf = chain[0]
    expired = leaf.not_valid_after_utc <= datetime.now(UTC)
    event(
        log,
        "tls-certificate",
        level=logging.ERROR if expired else logging.INFO,
        cert=cert,
        subject=leaf.subject.rfc4514_string(),
        not_after=leaf.not_valid_after_utc.isoformat(),
        expired=expired,
    )
    return context


class ServerTLS:
    """The SSL context new STARTTLS sessions use, swapped whole by `reload`."""

    def __init__(self, cert: Path, key: Path) -> None:
        self.cert = cert
        self.key = key
        self.context = server_context(cert, key)

    @classmethod
    def from_settings(cls, smtp: SmtpSettings) -> ServerTLS | None:
        """The edge's TLS, or None when `[smtp]` names no certificate."""
        if smtp.tls_cert is None or smtp.tls_key is None:
            return None
        return cls(smtp.tls_cert, smtp.tls_key)

    def reload(self) -> bool:
        """Re-read the certificate and key; on any error keep the context in use."""
        try:
            context = server_context(self.cert, self.key)
        except ConfigError as exc:
            event(
                log,
                "tls-reload-failed",
                level=logging.ERROR,
                cert=self.cert,
                key=self.key,
                kept="previous",
                error=exc,
            )
            return False
        self.context = context
        event(log, "tls-reloaded", cert=self.cert, key=self.key)
        return True

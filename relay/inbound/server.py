"""The listening side of the SMTP edge: one `RelaySMTP` per connection, with the limits
and the TLS of `[smtp]`, around the list's handler (edge.py).

`tls` is the holder of the SSL context (tls.py): each session reads it at STARTTLS, so a
reload (SIGHUP) reaches new sessions without the listening socket being touched."""

from __future__ import annotations

from collections.abc import Callable

from relay.core.config import Settings
from relay.core.errors import ConfigError
from relay.inbound.edge import ListHandler
from relay.inbound.limits import ConnectionLimits
from relay.inbound.protocol import RelaySMTP
from relay.inbound.tls import ServerTLS


def make_server_factory(
    handler: ListHandler, settings: Settings, tls: ServerTLS | None = None
) -> Callable[[], RelaySMTP]:
    smtp = settings.smtp
    hostname = smtp.hostname or settings.list.domain
    limits = ConnectionLimits(smtp.max_connections, smtp.max_connections_per_ip)
    if smtp.tls_required and tls is None:  # never plaintext by omission
        raise ConfigError("smtp: TLS is required but no certificate is loaded")

    def factory() -> RelaySMTP:
        return RelaySMTP(
            handler,
            limits=limits,
            max_bad_commands=smtp.max_bad_commands,
            tls=tls,
            require_starttls=smtp.tls_required,
            data_size_limit=smtp.max_message_size,
            hostname=hostname,
            ident="Embargo Relay",
            decode_data=False,
            timeout=smtp.idle_timeout.total_seconds(),
        )

    return factory

"""The listening side of the SMTP edge: one `RelaySMTP` per connection, with the limits
and the TLS of `[smtp]`, around the list's handler (edge.py)."""

from __future__ import annotations

from collections.abc import Callable

from relay.core.config import Settings
from relay.inbound.edge import ListHandler
from relay.inbound.limits import ConnectionLimits
from relay.inbound.protocol import RelaySMTP


def make_server_factory(handler: ListHandler, settings: Settings) -> Callable[[], RelaySMTP]:
    smtp = settings.smtp
    hostname = smtp.hostname or settings.list.domain
    limits = ConnectionLimits(smtp.max_connections, smtp.max_connections_per_ip)

    def factory() -> RelaySMTP:
        return RelaySMTP(
            handler,
            limits=limits,
            max_bad_commands=smtp.max_bad_commands,
            data_size_limit=smtp.max_message_size,
            hostname=hostname,
            ident="Embargo Relay",
            decode_data=False,
            timeout=smtp.idle_timeout.total_seconds(),
        )

    return factory

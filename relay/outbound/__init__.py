"""Copies leaving the relay: the gate (may this recipient have this copy now?), the
composition of each signed and encrypted copy, and the transport to the next hop.

May import: `relay.core`, `relay.model`, `relay.policy`, `relay.store`, `relay.leaks`,
`relay.app`.
"""

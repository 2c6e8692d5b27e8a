"""The durable store: the one writer of messages and deliveries (accept, claim, record,
hold, release, moderate; a recipient's copies as it arrives, leaves or gets a key), the
relay's own notices, the audit trail, the lookups of who owns a key and who an address
is to the list, and the public keys every node's keyring follows.

May import: `relay.core`, `relay.model`, `relay.policy`.
"""

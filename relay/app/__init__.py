"""The use-cases: advisories and their embargoes, confirmations, members, applications,
keys' health, contributions, grants; each owns its transaction and audit rows.

May import: `relay.core`, `relay.model`, `relay.policy`, `relay.store`, `relay.leaks`.
"""

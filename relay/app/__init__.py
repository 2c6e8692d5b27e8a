"""The use-cases: advisories and their embargoes (the lift, reminders, confirmations),
members, applications, keys' health, contributions, grants, incidents, moderation, the
list key for a new node; each owns its transaction and audit rows (transactions.py: one
transaction for a change that queues notices, whose spool files a rollback removes).

May import: `relay.core`, `relay.model`, `relay.policy`, `relay.store`, `relay.leaks`.
"""

"""Copies leaving the relay: a claimed delivery prepared (preparation.py: the job, what
becomes of it, its copy), the gate (may this recipient have this copy now?), the words
above the post in each copy (preface.py), the composition of each signed and encrypted
copy, and the transport to the next hop.

May import: `relay.core`, `relay.model`, `relay.policy`, `relay.store`, `relay.leaks`,
`relay.app`.
"""

"""Embargoed text and where it went: every part of a message read as text (content.py, with
charsets, markup, formats and archives), the matcher and its index of embargoed text, copies
a post's mail system sent outside the list, and tracing a leaked copy back to its recipient.

May import: `relay.core`, `relay.model`, `relay.policy`, `relay.store`.
"""

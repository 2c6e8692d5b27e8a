"""The tables: every row the relay keeps, by aggregate. The database is the queue.

May import: `relay.core`.
"""

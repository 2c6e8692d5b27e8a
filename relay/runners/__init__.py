"""The long-running parts: the dispatcher (claims due copies, sends, records), the
scheduler (lifts, reminders, key checks) and the service that wires them to the SMTP edge.

May import: every package except `relay.cli`.
"""

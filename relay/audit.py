"""Append-only audit trail: every administrative or policy change becomes a row.

Rows say who, what, on which subject, and the old and new values; never message
content or key material.
"""

from __future__ import annotations

import getpass
from typing import Any

from sqlalchemy.orm import Session

from relay.models import AuditEvent


def cli_actor() -> str:
    """The administrator running a CLI command."""
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli:unknown"


def record(session: Session, actor: str, action: str, subject: str, **detail: Any) -> AuditEvent:
    """Add one audit row in the caller's transaction (so it commits with the change)."""
    event = AuditEvent(actor=actor, action=action, subject=subject, detail=detail or None)
    session.add(event)
    return event

"""Append-only audit trail: every administrative or policy change becomes a row.

Rows say who, what, on which subject, and the old and new values; never message
content or key material. Who is `cli:<user>` for an administrator at the command line,
`web:<admin>` in the console or its HTTP API, `relay` for the relay itself and
`key:<fingerprint>` for a signed post.
"""

from __future__ import annotations

import getpass
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from relay.model import AuditEvent
from relay.store import audit_chain


def cli_actor() -> str:
    """The administrator running a CLI command."""
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli:unknown"


def web_actor(admin: str) -> str:
    """An administrator acting through the console or its HTTP API."""
    return f"web:{admin}"


def key_actor(fingerprint: str) -> str:
    """The actor of what a signed post did: its signing key."""
    return f"key:{fingerprint}"


# Rows of a post accepted before its actor was `key:<fingerprint>` name the bare fingerprint.
_BARE_FINGERPRINT = re.compile(r"^(?:[0-9A-Fa-f]{40}|[0-9A-Fa-f]{64})$")


def shown_actor(actor: str) -> str:
    """An actor as the listings show it: a bare fingerprint of an older row as `key:...`."""
    return key_actor(actor) if _BARE_FINGERPRINT.match(actor) else actor


def record(session: Session, actor: str, action: str, subject: str, **detail: Any) -> AuditEvent:
    """Add one audit row in the caller's transaction (so it commits with the change)."""
    event = AuditEvent(actor=actor, action=action, subject=subject, detail=detail or None)
    session.add(event)
    audit_chain.track(session, event)
    return event


@dataclass(frozen=True)
class AuditView:
    """An audit row as the listings show it: `old`, `new` and `reason` lifted out."""

    id: int
    at: datetime
    actor: str
    action: str
    subject: str
    old: Any
    new: Any
    reason: str | None
    detail: dict[str, Any]  # whatever else the row records


def audit_view(e: AuditEvent) -> AuditView:
    detail = dict(e.detail or {})
    return AuditView(
        id=e.id,
        at=e.at,
        actor=shown_actor(e.actor),
        action=e.action,
        subject=e.subject,
        old=detail.pop("old", None),
        new=detail.pop("new", None),
        reason=detail.pop("reason", None),
        detail=detail,
    )

"""The tables: every row the relay keeps, by aggregate. The database is the queue.

May import: `relay.core`.
"""

from relay.model.advisories import (
    Advisory,
    AdvisoryReminder,
    AdvisoryState,
    PendingChange,
    PendingChangeState,
)
from relay.model.audit import AuditEvent
from relay.model.base import Base, UTCDateTime, utcnow
from relay.model.leaks import Grant, GrantState, Incident, IncidentKind
from relay.model.members import (
    Application,
    ApplicationState,
    Contribution,
    ContributionStatus,
    KeyReminder,
    Member,
    MemberKey,
    MemberState,
    Sender,
    SenderKey,
    StatusReminder,
)
from relay.model.messages import (
    PENDING_STATUSES,
    Delivery,
    DeliveryStatus,
    FailureReason,
    HoldReason,
    Message,
    MessageKind,
    UsedSignature,
)

__all__ = [
    "PENDING_STATUSES",
    "Advisory",
    "AdvisoryReminder",
    "AdvisoryState",
    "Application",
    "ApplicationState",
    "AuditEvent",
    "Base",
    "Contribution",
    "ContributionStatus",
    "Delivery",
    "DeliveryStatus",
    "FailureReason",
    "Grant",
    "GrantState",
    "HoldReason",
    "Incident",
    "IncidentKind",
    "KeyReminder",
    "Member",
    "MemberKey",
    "MemberState",
    "Message",
    "MessageKind",
    "PendingChange",
    "PendingChangeState",
    "Sender",
    "SenderKey",
    "StatusReminder",
    "UTCDateTime",
    "UsedSignature",
    "utcnow",
]

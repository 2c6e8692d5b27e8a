"""The tables: every row the relay keeps, by aggregate. The database is the queue.

May import: `relay.core`.
"""

from relay.model.admins import Admin, AdminSession, AdminToken, LoginFailure
from relay.model.advisories import (
    Advisory,
    AdvisoryReminder,
    AdvisoryState,
    PendingChange,
    PendingChangeState,
)
from relay.model.audit import AuditChainHead, AuditEvent
from relay.model.base import Base, UTCDateTime, utcnow
from relay.model.cluster import Lease, Node
from relay.model.data_keys import DataKey
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
    MessageBody,
    MessageKind,
    UsedSignature,
)
from relay.model.public_keys import PublicKey

__all__ = [
    "PENDING_STATUSES",
    "Admin",
    "AdminSession",
    "AdminToken",
    "Advisory",
    "AdvisoryReminder",
    "AdvisoryState",
    "Application",
    "ApplicationState",
    "AuditChainHead",
    "AuditEvent",
    "Base",
    "Contribution",
    "ContributionStatus",
    "DataKey",
    "Delivery",
    "DeliveryStatus",
    "FailureReason",
    "Grant",
    "GrantState",
    "HoldReason",
    "Incident",
    "IncidentKind",
    "KeyReminder",
    "Lease",
    "LoginFailure",
    "Member",
    "MemberKey",
    "MemberState",
    "Message",
    "MessageBody",
    "MessageKind",
    "Node",
    "PendingChange",
    "PendingChangeState",
    "PublicKey",
    "Sender",
    "SenderKey",
    "StatusReminder",
    "UTCDateTime",
    "UsedSignature",
    "utcnow",
]

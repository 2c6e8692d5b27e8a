"""What the HTTP API (/api/v1) reads and answers, as typed models: they make its OpenAPI
document, and they are the only shapes a response can take.

Built from the use-cases' views (relay.app), leaving nothing out that the CLI's `--json`
shows and adding nothing it hides: no post, notice or public text (only its length), no
key material (fingerprints only). Every time is ISO 8601 in UTC with its offset
(`2026-12-01T14:00:00+00:00`).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, PlainSerializer, WithJsonSchema

from relay.core.times import ACCEPTED_FORMS


def _utc(value: datetime) -> str:
    return value.astimezone(UTC).isoformat()


UtcTime = Annotated[
    datetime,
    PlainSerializer(_utc, return_type=str, when_used="json"),
    WithJsonSchema({"type": "string", "format": "date-time"}, mode="serialization"),
]

# PostgreSQL keeps no NUL character in text: refused as input, never left to fail there.
NO_NUL = r"^[^\x00]*$"
Text = Annotated[str, Field(pattern=NO_NUL)]
Reason = Annotated[
    str | None, Field(default=None, pattern=NO_NUL, description="Why (kept in the audit trail).")
]

WHEN_FORMS = ACCEPTED_FORMS.replace("(--tz)", '("tz")')


class Model(BaseModel):
    # from_attributes: a shape is read straight off the use-case's view (`Out.model_validate
    # (view)`), which names its fields the same, instead of a copy written out field by field.
    model_config = ConfigDict(extra="forbid", from_attributes=True)


class ErrorOut(Model):
    """A refusal: the request changed nothing."""

    error: str = Field(description="What was refused and why, fit for an administrator.")


# Advisories


class AdvisoryOut(Model):
    id: str
    title: str
    state: str = Field(description="embargoed, lifted or cancelled.")
    lift_at: UtcTime | None = Field(description="The lift time; null while none is set.")
    countdown_seconds: int | None = Field(
        description="Seconds until the lift of an embargoed advisory (negative once due); "
        "null when there is nothing to count."
    )
    countdown: str | None = Field(description="The same, as the CLI shows it: 'in 3d 4h'.")
    created_by: str
    created_at: UtcTime
    lifted_at: UtcTime | None
    public_release: bool = Field(description="A public text is sent at the lift.")
    public_text_chars: int = Field(
        description="Length of the public text; the text stays embargoed until the lift."
    )


class AuditRowOut(Model):
    id: int
    at: UtcTime
    actor: str = Field(description="cli:<user>, web:<admin>, relay or key:<fingerprint>.")
    action: str
    subject: str
    old: Any = None
    new: Any = None
    reason: str | None = None
    detail: dict[str, Any] = Field(description="Whatever else the row records.")


class PendingChangeOut(Model):
    """A signed request to bring the lift earlier, waiting for an administrator."""

    id: int
    lift_at: UtcTime | None = Field(description="The lift time asked for; null: lift now.")
    old_lift_at: UtcTime | None
    requested_by: str
    requested_at: UtcTime


class AdvisoryDeliveryOut(Model):
    recipient: str
    message_id: str
    kind: str = Field(description="post or notice.")
    status: str
    attempts: int
    last_code: str | None


class ContributionOut(Model):
    """A member's contributing-back status for the advisory."""

    member: str
    name: str
    member_state: str
    status: str
    text: str | None
    updated_at: UtcTime | None
    updated_by: str | None


class AdvisoryDetailOut(AdvisoryOut):
    pending_changes: list[PendingChangeOut]
    history: list[AuditRowOut]
    deliveries: list[AdvisoryDeliveryOut]
    contributions: list[ContributionOut]


class AdvisoryChangeOut(Model):
    """A create or schedule: the lift time before and after, and the members' notice."""

    advisory: AdvisoryOut
    old_lift_at: UtcTime | None
    new_lift_at: UtcTime | None
    moved: bool = Field(description="The lift time changed (the members were told).")
    warnings: list[str] = Field(description="Soft rules of the list's policy it breaks.")
    notice: str | None = Field(description="Message id of the members' notice, if one.")


class LiftedOut(Model):
    advisory: AdvisoryOut
    notices: list[str] = Field(description="Message ids of the notices the lift queued.")
    released: int = Field(description="Deliveries that were held for the embargo, now queued.")


class ConfirmedOut(Model):
    change: PendingChangeOut
    advisory: AdvisoryOut


_LIFT_DESCRIPTION = (
    "The lift time, one definite instant: an offset or zone name is required "
    f"unless `tz` is given.\n\n{WHEN_FORMS}"
)
_TZ = Field(
    default=None,
    pattern=NO_NUL,
    description="IANA zone of a lift time written without one, e.g. Europe/Berlin.",
)


class AdvisoryIn(Model):
    id: Text | None = Field(
        default=None,
        description="The SRC's own ID (CVE-2026-1234); without one the relay assigns "
        "ADV-<year>-<n>.",
        examples=["CVE-2026-1234"],
    )
    title: Text = Field(examples=["Kubelet escape"])
    lift: Text | None = Field(default=None, description=_LIFT_DESCRIPTION, examples=["+30d"])
    tz: str | None = _TZ


class ScheduleIn(Model):
    lift: Text = Field(description=_LIFT_DESCRIPTION, examples=["+7d", "in 36h"])
    tz: str | None = _TZ
    reason: Reason = None


class ReasonIn(Model):
    reason: Reason = None


class RequiredReasonIn(Model):
    reason: Text = Field(description="Why (kept in the audit trail).")


class PublicTextIn(Model):
    text: Text = Field(
        description="Posted in plaintext to the public addresses, only after the lift."
    )


# Moderation, deliveries, members, incidents, audit


class HeldPostOut(Model):
    id: str = Field(description="The post's message id.")
    advisory_id: str | None
    mail_from: str
    signer: str | None = Field(description="Fingerprint of the key that signed it.")
    received_at: UtcTime
    copies: int = Field(description="Copies held, one per recipient.")


class ModeratedOut(Model):
    message_id: str
    copies: int = Field(description="Copies queued (release) or dropped (reject).")


class DeliveryOut(Model):
    id: int
    message_id: str
    recipient: str
    status: str
    attempts: int
    next_attempt_at: UtcTime | None
    last_code: str | None
    last_reason: str | None


class MemberOut(Model):
    address: str
    name: str
    state: str = Field(description="active, bouncing, suspended or removed.")
    fingerprints: list[str]
    key_count: int
    usable: bool = Field(description="Has a key copies can be encrypted to.")
    problem: str | None
    created_at: UtcTime
    domains: list[str]
    criteria: dict[str, str]
    vouched_by: str | None
    incidents: int = Field(description="Leaks recorded against the member.")


class StateChangeOut(Model):
    address: str
    old: str | None
    new: str
    cancelled: int = Field(description="Unsent deliveries stopped by the change.")


class IncidentOut(Model):
    """A leak: how strongly a message matched, never the excerpts themselves."""

    id: int
    at: UtcTime
    advisory_id: str
    member: str | None
    sender: str
    recipients: list[str]
    kind: str
    message_id: str | None
    score: float | None
    identifiers: list[str]
    excerpts: int
    note: str | None
    recorded_by: str
    report_message_id: str | None
    resolved_at: UtcTime | None
    resolved_by: str | None
    resolution: str | None


class ChainCheckOut(Model):
    ok: bool
    rows: int = Field(description="Rows read up to the first break, or all of them.")
    first_bad: int | None = Field(description="The audit row where the chain first fails.")
    reason: str | None
    head: str | None = Field(description="Hex SHA-256 of the newest row, to anchor the chain.")

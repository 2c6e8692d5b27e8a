"""The API's day-to-day operations: posts held for moderation, deliveries, members,
incidents and the audit trail.

Each endpoint is a CLI command over the same use-case: `relay held`, `relay queue`,
`relay member list|suspend|resume`, `relay incidents`, `relay audit [verify]`. Names are
checked first as the CLI checks them (relay.app.known): an unknown one is a 404.
"""

# No `from __future__ import annotations`: FastAPI reads the handlers' annotations, which
# name types local to `add_routes`.
from collections.abc import Callable
from http import HTTPStatus
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query

from relay.app import admin as admin_app
from relay.app import advisory_admin, audit_chain, incidents, members, moderation
from relay.app.membership import Move, change_state
from relay.core.errors import RelayError
from relay.store import audit
from relay.web.api_errors import Refused, require_known, responses, status_of
from relay.web.api_models import (
    NO_NUL,
    AuditRowOut,
    ChainCheckOut,
    DeliveryOut,
    HeldPostOut,
    IncidentOut,
    MemberOut,
    ModeratedOut,
    ReasonIn,
    RequiredReasonIn,
    StateChangeOut,
)
from relay.web.context import Console

MessageId = Annotated[str, Path(pattern=NO_NUL, description="The post's message id.")]
Address = Annotated[str, Path(pattern=NO_NUL, description="The member's address.")]
# Row ids are PostgreSQL `integer`s: a larger number names nothing, and is refused before
# the database refuses it with an error.
DeliveryId = Annotated[int, Path(ge=1, le=2**31 - 1, description="The delivery's id.")]
_FILTER = {"pattern": NO_NUL}


def add_routes(router: APIRouter, console: Console, admin: Callable[..., str]) -> None:
    Admin = Annotated[str, Depends(admin)]
    db = console.db

    # Posts held for moderation

    @router.get(
        "/held", tags=["moderation"], summary="Posts waiting for a moderator", responses=responses()
    )
    def held_posts(_admin: Admin) -> list[HeldPostOut]:
        return [HeldPostOut.model_validate(p) for p in moderation.held_posts(db)]

    @router.post(
        "/held/{message_id}/release",
        tags=["moderation"],
        summary="Send a held post on to its audience",
        responses=responses(404, 409, 422),
    )
    def release_post(message_id: MessageId, name: Admin) -> ModeratedOut:
        require_known(db, "post", message_id)
        copies = moderation.release(db, message_id, audit.web_actor(name))
        return ModeratedOut(message_id=message_id, copies=copies)

    @router.post(
        "/held/{message_id}/reject",
        tags=["moderation"],
        summary="Refuse a held post: none of its copies is sent",
        responses=responses(404, 409, 422),
    )
    def reject_post(message_id: MessageId, body: RequiredReasonIn, name: Admin) -> ModeratedOut:
        require_known(db, "post", message_id)
        copies = moderation.reject(db, message_id, audit.web_actor(name), body.reason)
        return ModeratedOut(message_id=message_id, copies=copies)

    # Deliveries

    @router.get(
        "/deliveries",
        tags=["deliveries"],
        summary="Deliveries not yet sent",
        description="Queued, active, deferred, held and failed; sent ones too on request.",
        responses=responses(422),
    )
    def list_deliveries(
        _admin: Admin,
        include_sent: Annotated[bool, Query(description="Also the deliveries sent.")] = False,
    ) -> list[DeliveryOut]:
        return [DeliveryOut.model_validate(d) for d in admin_app.list_deliveries(db, include_sent)]

    @router.post(
        "/deliveries/{delivery_id}/retry",
        tags=["deliveries"],
        summary="Queue a held, deferred or failed delivery for an attempt now",
        responses=responses(404, 409, 422),
    )
    def retry_delivery(delivery_id: DeliveryId, name: Admin) -> DeliveryOut:
        require_known(db, "delivery", delivery_id)
        return DeliveryOut.model_validate(
            admin_app.retry_delivery(db, delivery_id, audit.web_actor(name))
        )

    # Members

    @router.get(
        "/members",
        tags=["members"],
        summary="Members with their keys' state and the leaks recorded against them",
        responses=responses(422),
    )
    def list_members(
        _admin: Admin,
        include_removed: Annotated[bool, Query(description="Also removed members.")] = False,
    ) -> list[MemberOut]:
        views = members.list_members(db, console.crypto, include_removed=include_removed)
        return [MemberOut.model_validate(m) for m in views]

    def moved(address: str, move: Move, name: str, reason: str | None) -> StateChangeOut:
        require_known(db, "member", address)
        try:
            change = change_state(db, address, move, audit.web_actor(name), reason)
        except RelayError as exc:
            # Refused without a reason: the input; with one: the member's state.
            plain = HTTPStatus.UNPROCESSABLE_ENTITY if not (reason or "").strip() else None
            raise Refused(status_of(exc, plain or HTTPStatus.CONFLICT), str(exc)) from None
        return StateChangeOut.model_validate(change)

    @router.post(
        "/members/{address}/suspend",
        tags=["members"],
        summary="Stop all deliveries to a member until it is resumed",
        description="Its queued deliveries are cancelled too. Needs a reason (422 without).",
        responses=responses(404, 409, 422),
    )
    def suspend_member(
        address: Address, name: Admin, body: ReasonIn | None = None
    ) -> StateChangeOut:
        return moved(address, Move.SUSPEND, name, None if body is None else body.reason)

    @router.post(
        "/members/{address}/resume",
        tags=["members"],
        summary="Make a suspended or bouncing member active again",
        description="It receives what is posted from now on. Needs a reason (422 without).",
        responses=responses(404, 409, 422),
    )
    def resume_member(
        address: Address, name: Admin, body: ReasonIn | None = None
    ) -> StateChangeOut:
        return moved(address, Move.RESUME, name, None if body is None else body.reason)

    # Incidents and the audit trail

    @router.get(
        "/incidents",
        tags=["incidents"],
        summary="Leaks of embargoed advisories, oldest first",
        responses=responses(404, 422),
    )
    def list_incidents(
        _admin: Admin,
        member: Annotated[str | None, Query(description="Only this member's.", **_FILTER)] = None,
        advisory: Annotated[
            str | None, Query(description="Only this advisory's.", **_FILTER)
        ] = None,
    ) -> list[IncidentOut]:
        if member is not None:
            require_known(db, "member", member)
        if advisory is not None:
            require_known(db, "advisory", advisory)
        found = incidents.list_incidents(db, member=member, advisory_id=advisory)
        return [IncidentOut.model_validate(i) for i in found]

    @router.get(
        "/audit",
        tags=["audit"],
        summary="The audit trail, newest last",
        responses=responses(404, 422),
    )
    def audit_trail(
        _admin: Admin,
        advisory: Annotated[
            str | None, Query(description="Only this advisory's changes.", **_FILTER)
        ] = None,
        limit: Annotated[int, Query(ge=1, le=10_000, description="The newest N rows.")] = 50,
    ) -> list[AuditRowOut]:
        if advisory is not None:
            require_known(db, "advisory", advisory)
        return [
            AuditRowOut.model_validate(r) for r in advisory_admin.audit_trail(db, advisory, limit)
        ]

    @router.get(
        "/audit/verify",
        tags=["audit"],
        summary="Check the audit trail's hash chain",
        description="`ok` false names the first row edited, removed or added directly.",
        responses=responses(),
    )
    def verify_audit(_admin: Admin) -> ChainCheckOut:
        check = audit_chain.verify_chain(db)
        return ChainCheckOut.model_validate(check)

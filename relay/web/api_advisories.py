"""The API's advisories: list, create, show, schedule, confirm, lift, cancel, public text.

Each endpoint is the `relay advisory ...` command of the same name over the same
use-case (relay.app.advisory_admin), the name checked first as the CLI checks it
(relay.app.known), so an unknown advisory is a 404 before anything is tried.
"""

# No `from __future__ import annotations`: FastAPI reads the handlers' annotations, which
# name types local to `add_routes`.
from collections.abc import Callable
from datetime import datetime
from http import HTTPStatus
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query

from relay.app import advisory_admin
from relay.app.advisory_admin import AdvisoryView
from relay.core.errors import RelayError
from relay.core.times import countdown
from relay.model import AdvisoryState, utcnow
from relay.store import audit
from relay.web.api_errors import Refused, refused_as, require_known, responses, status_of
from relay.web.api_models import (
    NO_NUL,
    AdvisoryChangeOut,
    AdvisoryDeliveryOut,
    AdvisoryDetailOut,
    AdvisoryIn,
    AdvisoryOut,
    AuditRowOut,
    ConfirmedOut,
    ContributionOut,
    LiftedOut,
    PendingChangeOut,
    PublicTextIn,
    ReasonIn,
    ScheduleIn,
)
from relay.web.context import Console

TAG = "advisories"
AdvisoryId = Annotated[str, Path(pattern=NO_NUL, description="The advisory's ID.")]


def advisory_out(view: AdvisoryView, now: datetime) -> AdvisoryOut:
    left = None
    if view.state == AdvisoryState.EMBARGOED and view.lift_at is not None:
        left = view.lift_at - now
    return AdvisoryOut(
        id=view.id,
        title=view.title,
        state=view.state,
        lift_at=view.lift_at,
        countdown_seconds=None if left is None else int(left.total_seconds()),
        countdown=None if left is None or view.lift_at is None else countdown(view.lift_at, now),
        created_by=view.created_by,
        created_at=view.created_at,
        lifted_at=view.lifted_at,
        public_release=view.public_release,
        public_text_chars=view.public_text_chars,
    )


def change_out(change: advisory_admin.AdvisoryChange, now: datetime) -> AdvisoryChangeOut:
    return AdvisoryChangeOut(
        advisory=advisory_out(change.advisory, now),
        old_lift_at=change.old,
        new_lift_at=change.new,
        moved=change.moved,
        warnings=change.warnings,
        notice=change.notice,
    )


def lift_time(text: str, tz: str | None, now: datetime) -> datetime:
    """The request's lift time, read as the CLI reads WHEN; refused (422) unless it is one
    definite instant."""
    try:
        return advisory_admin.read_lift_time(text, tz, now)
    except RelayError as exc:
        # The CLI's --tz option is the body's "tz" field here.
        message = str(exc).replace("or --tz", 'or "tz"').replace("(--tz)", '("tz")')
        raise Refused(HTTPStatus.UNPROCESSABLE_ENTITY, f"lift: {message}") from None


def add_routes(router: APIRouter, console: Console, admin: Callable[..., str]) -> None:
    Admin = Annotated[str, Depends(admin)]
    db, spool, settings = console.db, console.spool, console.settings

    def known_advisory(advisory_id: str) -> None:
        require_known(db, "advisory", advisory_id)

    @router.get(
        "/advisories",
        tags=[TAG],
        summary="Advisories by lift time",
        responses=responses(422),
    )
    def list_advisories(
        _admin: Admin,
        include_closed: Annotated[
            bool, Query(description="Also lifted and cancelled advisories.")
        ] = False,
    ) -> list[AdvisoryOut]:
        now = utcnow()
        views = advisory_admin.list_advisories(db, include_closed=include_closed)
        return [advisory_out(v, now) for v in views]

    @router.post(
        "/advisories",
        tags=[TAG],
        summary="Create an embargoed advisory",
        description="A lift time given here is announced to every active member. Soft rules "
        "of the list's policy come back as warnings; hard ones refuse it (422).",
        status_code=HTTPStatus.CREATED,
        responses=responses(409, 422),
    )
    @refused_as(HTTPStatus.UNPROCESSABLE_ENTITY)
    def create_advisory(body: AdvisoryIn, name: Admin) -> AdvisoryChangeOut:
        now = utcnow()
        lift_at = None if body.lift is None else lift_time(body.lift, body.tz, now)
        try:
            change = advisory_admin.create_advisory(
                db, spool, settings, body.id, body.title, lift_at, audit.web_actor(name), now
            )
        except RelayError as exc:
            raise Refused(_create_status(exc, body.id), str(exc)) from None
        return change_out(change, now)

    def _create_status(exc: RelayError, advisory_id: str | None) -> int:
        """A refused create of an ID the relay holds is a conflict; the rest is input."""
        status = status_of(exc, HTTPStatus.UNPROCESSABLE_ENTITY)
        if advisory_id is not None and status == HTTPStatus.UNPROCESSABLE_ENTITY:
            try:
                known_advisory(advisory_id)
            except RelayError:
                return status
            return HTTPStatus.CONFLICT
        return status

    @router.get(
        "/advisories/{advisory_id}",
        tags=[TAG],
        summary="One advisory",
        description="State, lift time and countdown, changes waiting for confirmation, "
        "history, deliveries and each member's contributing-back status.",
        responses=responses(404, 422),
    )
    def show_advisory(advisory_id: AdvisoryId, _admin: Admin) -> AdvisoryDetailOut:
        known_advisory(advisory_id)
        report = advisory_admin.advisory_report(db, advisory_id)
        base = advisory_out(report.advisory, utcnow())
        return AdvisoryDetailOut(
            **base.model_dump(),
            pending_changes=[PendingChangeOut.model_validate(p) for p in report.pending],
            history=[AuditRowOut.model_validate(r) for r in report.history],
            deliveries=[AdvisoryDeliveryOut.model_validate(d) for d in report.deliveries],
            contributions=[ContributionOut.model_validate(s) for s in report.statuses],
        )

    @router.post(
        "/advisories/{advisory_id}/schedule",
        tags=[TAG],
        summary="Set or move the lift time",
        description="Every active member gets an encrypted notice of the old and new time "
        "and the reason. Refused for a time without a zone or in the past (422), against a "
        "hard rule of the list's policy (422), and for a lifted or cancelled advisory (409).",
        responses=responses(404, 409, 422),
    )
    def schedule_advisory(
        advisory_id: AdvisoryId, body: ScheduleIn, name: Admin
    ) -> AdvisoryChangeOut:
        known_advisory(advisory_id)
        now = utcnow()
        lift_at = lift_time(body.lift, body.tz, now)
        change = advisory_admin.schedule_advisory(
            db, spool, settings, advisory_id, lift_at, audit.web_actor(name), body.reason, now
        )
        return change_out(change, now)

    @router.post(
        "/advisories/{advisory_id}/confirm",
        tags=[TAG],
        summary="Confirm the earlier lift a signed post asked for",
        description="Members are told of the new lift time; an early lift (X-Lift: now) "
        "lifts at once. Refused (409) when nothing waits, or to the one who asked.",
        responses=responses(404, 409, 422),
    )
    def confirm_change(
        advisory_id: AdvisoryId, name: Admin, body: ReasonIn | None = None
    ) -> ConfirmedOut:
        known_advisory(advisory_id)
        reason = None if body is None else body.reason
        pending, view = advisory_admin.confirm_change(
            db, spool, settings, advisory_id, audit.web_actor(name), reason
        )
        return ConfirmedOut(
            change=PendingChangeOut.model_validate(pending), advisory=advisory_out(view, utcnow())
        )

    @router.post(
        "/advisories/{advisory_id}/lift",
        tags=[TAG],
        summary="Lift now",
        description="Members are told, the public text (if any) is sent. Once: a lifted or "
        "cancelled advisory is refused (409).",
        responses=responses(404, 409, 422),
    )
    def lift_advisory(
        advisory_id: AdvisoryId, name: Admin, body: ReasonIn | None = None
    ) -> LiftedOut:
        known_advisory(advisory_id)
        reason = None if body is None else body.reason
        done = advisory_admin.lift_advisory(
            db, spool, settings, advisory_id, audit.web_actor(name), reason
        )
        return LiftedOut(
            advisory=_current(done.advisory_id),
            notices=list(done.notices),
            released=done.released,
        )

    def _current(advisory_id: str) -> AdvisoryOut:
        return advisory_out(advisory_admin.advisory_report(db, advisory_id).advisory, utcnow())

    @router.post(
        "/advisories/{advisory_id}/cancel",
        tags=[TAG],
        summary="Withdraw an advisory",
        description="No lift, no public release; a lifted or cancelled one is refused (409).",
        responses=responses(404, 409, 422),
    )
    def cancel_advisory(
        advisory_id: AdvisoryId, name: Admin, body: ReasonIn | None = None
    ) -> AdvisoryOut:
        known_advisory(advisory_id)
        reason = None if body is None else body.reason
        view = advisory_admin.cancel_advisory(db, advisory_id, audit.web_actor(name), reason)
        return advisory_out(view, utcnow())

    @router.put(
        "/advisories/{advisory_id}/public-text",
        tags=[TAG],
        summary="Set the text posted publicly at the lift",
        description="It goes, in plaintext and only after the lift, to the list's public "
        "addresses; setting it marks the advisory for public release. Only its length is "
        "ever shown before the lift.",
        responses=responses(404, 409, 422),
    )
    @refused_as(HTTPStatus.UNPROCESSABLE_ENTITY)
    def set_public_text(advisory_id: AdvisoryId, body: PublicTextIn, name: Admin) -> AdvisoryOut:
        known_advisory(advisory_id)
        try:
            data = body.text.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate from a JSON escape
            raise Refused(
                HTTPStatus.UNPROCESSABLE_ENTITY, "the public text is not valid Unicode"
            ) from None
        view = advisory_admin.set_public_text(db, advisory_id, data, audit.web_actor(name))
        return advisory_out(view, utcnow())

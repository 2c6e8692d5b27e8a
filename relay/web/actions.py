"""The console's actions (POST forms): each one calls the use-case the CLI calls, as
`web:<admin>`, after `acting` checked the session and its CSRF token. The browser is sent
back to the page it came from, with the result or the refusal as a flash message; a
refusal (`RelayError`) changes nothing, and its message is all the visitor sees of it."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Annotated

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import RedirectResponse, Response

from relay.app import admin, admins, advisory_admin, membership, moderation, viewing
from relay.app.advisory_admin import AdvisoryChange
from relay.app.membership import Move
from relay.core.errors import RelayError
from relay.core.times import countdown, format_when
from relay.model import utcnow
from relay.web.auth import (
    Visitor,
    acting,
    clear_cookie,
    client_address,
    console_of,
    same_origin,
    set_cookie,
)
from relay.web.pages import safe_next
from relay.web.rendering import flashes_of, render

log = logging.getLogger("relay.web")

router = APIRouter(include_in_schema=False)
Acting = Annotated[Visitor, Depends(acting)]
Text = Annotated[str, Form()]


def _done(
    request: Request, visitor: Visitor, back: str, work: Callable[[], list[tuple[str, str]]]
) -> Response:
    """Run `work` (its flash messages as (kind, text)); a refusal becomes an error flash."""
    flashes = flashes_of(request)
    try:
        for kind, text in work():
            flashes.add(visitor.secret, kind, text)
    except RelayError as exc:
        flashes.add(visitor.secret, "error", str(exc))
    return RedirectResponse(safe_next(back), 303)


def _page(advisory_id: str) -> str:
    return f"/advisories/{advisory_id}"


class NotConfirmed(RelayError):
    """An irreversible step without the advisory's ID typed to confirm it."""


def _confirmed(advisory_id: str, typed: str, what: str) -> None:
    """An early lift is the worst outcome and cannot be taken back: the advisory's ID,
    typed, tells a deliberate step from a stray click on the wrong page or button."""
    if typed.strip() != advisory_id:
        raise NotConfirmed(f"nothing changed: type {advisory_id} in the confirmation box to {what}")


# Logging in and out


@router.post("/login")
def log_in(request: Request, name: Text = "", password: Text = "", next: Text = "/") -> Response:
    same_origin(request)
    console = console_of(request)
    try:
        secret, _ = admins.log_in(
            console.db, name, password, client_address(request), console.settings.web
        )
    except admins.LoginThrottled as exc:
        seconds = max(1, int(exc.retry_after.total_seconds() + 0.999))
        refused = render(request, "login.html", None, 429, error=str(exc), next=safe_next(next))
        refused.headers["Retry-After"] = str(seconds)
        return refused
    except RelayError as exc:
        return render(request, "login.html", None, 401, error=str(exc), next=safe_next(next))
    response = RedirectResponse(safe_next(next), 303)
    set_cookie(response, console, secret)
    return response


@router.post("/logout")
def log_out(request: Request, visitor: Acting) -> Response:
    console = console_of(request)
    admins.log_out(console.db, visitor.secret, visitor.actor)
    flashes_of(request).take(visitor.secret)
    response = RedirectResponse("/login", 303)
    clear_cookie(response, console)
    return response


# Advisories


def _change_flashes(change: AdvisoryChange, what: str) -> list[tuple[str, str]]:
    shown = [("warning", w) for w in change.warnings]
    if change.new is not None and change.moved:
        left = countdown(change.new, utcnow())
        shown.append(("ok", f"{what}; lift time {format_when(change.new)} ({left})"))
    else:
        shown.append(("ok", what))
    if change.notice is not None:
        shown.append(("ok", f"members notified of the lift time (message {change.notice})"))
    return shown


@router.post("/advisories")
def create(
    request: Request,
    visitor: Acting,
    title: Text = "",
    advisory_id: Text = "",
    lift: Text = "",
    tz: Text = "",
) -> Response:
    console = console_of(request)
    created: list[str] = []

    def work() -> list[tuple[str, str]]:
        now = utcnow()
        lift_at = advisory_admin.read_lift_time(lift, tz or None, now) if lift.strip() else None
        change = advisory_admin.create_advisory(
            console.db,
            console.spool,
            console.settings,
            advisory_id.strip() or None,
            title,
            lift_at,
            visitor.actor,
            now,
        )
        created.append(change.advisory.id)
        return _change_flashes(change, f"advisory {change.advisory.id} created")

    response = _done(request, visitor, "/", work)
    if created:
        response.headers["location"] = _page(created[0])
    return response


@router.post("/advisories/{advisory_id}/schedule")
def schedule(
    request: Request,
    visitor: Acting,
    advisory_id: str,
    lift: Text = "",
    tz: Text = "",
    reason: Text = "",
    confirm: Text = "",
) -> Response:
    console = console_of(request)

    def work() -> list[tuple[str, str]]:
        now = utcnow()
        lift_at = advisory_admin.read_lift_time(lift, tz or None, now)
        current = advisory_admin.advisory_report(console.db, advisory_id).advisory.lift_at
        if current is not None and now < lift_at < current:  # a past time: refused below
            _confirmed(advisory_id, confirm, "move the lift earlier")
        change = advisory_admin.schedule_advisory(
            console.db,
            console.spool,
            console.settings,
            advisory_id,
            lift_at,
            visitor.actor,
            reason.strip() or None,
            now,
        )
        if not change.moved:
            return [("ok", f"lift time of {change.advisory.id} unchanged")]
        verb = "set" if change.old is None else "moved"
        return _change_flashes(change, f"lift time of {change.advisory.id} {verb}")

    return _done(request, visitor, _page(advisory_id), work)


@router.post("/advisories/{advisory_id}/confirm")
def confirm(request: Request, visitor: Acting, advisory_id: str, reason: Text = "") -> Response:
    console = console_of(request)

    def work() -> list[tuple[str, str]]:
        pending, view = advisory_admin.confirm_change(
            console.db,
            console.spool,
            console.settings,
            advisory_id,
            visitor.actor,
            reason.strip() or None,
        )
        if pending.lift_at is None:
            return [("ok", f"advisory {view.id} lifted, as {pending.requested_by} asked")]
        moved = format_when(view.lift_at) if view.lift_at else "not set"
        return [("ok", f"lift time of {view.id} moved to {moved}, as {pending.requested_by} asked")]

    return _done(request, visitor, _page(advisory_id), work)


@router.post("/advisories/{advisory_id}/lift")
def lift(
    request: Request, visitor: Acting, advisory_id: str, reason: Text = "", confirm: Text = ""
) -> Response:
    console = console_of(request)

    def work() -> list[tuple[str, str]]:
        _confirmed(advisory_id, confirm, "lift it now")
        done = advisory_admin.lift_advisory(
            console.db,
            console.spool,
            console.settings,
            advisory_id,
            visitor.actor,
            reason.strip() or None,
        )
        shown = [
            ("ok", f"advisory {done.advisory_id} lifted; {len(done.notices)} notice(s) queued")
        ]
        if done.released:
            shown.append(("ok", f"{done.released} delivery(ies) held for the embargo released"))
        return shown

    return _done(request, visitor, _page(advisory_id), work)


@router.post("/advisories/{advisory_id}/cancel")
def cancel(
    request: Request, visitor: Acting, advisory_id: str, reason: Text = "", confirm: Text = ""
) -> Response:
    console = console_of(request)

    def work() -> list[tuple[str, str]]:
        _confirmed(advisory_id, confirm, "cancel it")
        view = advisory_admin.cancel_advisory(
            console.db, advisory_id, visitor.actor, reason.strip() or None
        )
        return [("ok", f"advisory {view.id} cancelled")]

    return _done(request, visitor, _page(advisory_id), work)


@router.post("/advisories/{advisory_id}/public-text")
def public_text(request: Request, visitor: Acting, advisory_id: str, text: Text = "") -> Response:
    console = console_of(request)

    def work() -> list[tuple[str, str]]:
        # A browser sends a textarea's lines with CRLF; the CLI's file would have LF.
        data = text.replace("\r\n", "\n").encode("utf-8")
        view = advisory_admin.set_public_text(console.db, advisory_id, data, visitor.actor)
        targets = ", ".join(console.settings.embargo.public_addresses) or "no address yet"
        chars = view.public_text_chars
        return [("ok", f"public text of {view.id} set ({chars} characters); it goes to {targets}")]

    return _done(request, visitor, _page(advisory_id), work)


# Held posts, the queue, members


@router.post("/held/{message_id}/release")
def release(request: Request, visitor: Acting, message_id: str) -> Response:
    db = console_of(request).db

    def work() -> list[tuple[str, str]]:
        count = moderation.release(db, message_id, visitor.actor)
        return [("ok", f"released: {message_id} ({count} copies queued)")]

    return _done(request, visitor, "/held", work)


@router.post("/held/{message_id}/reject")
def reject(request: Request, visitor: Acting, message_id: str, reason: Text = "") -> Response:
    db = console_of(request).db

    def work() -> list[tuple[str, str]]:
        if not reason.strip():
            raise RelayError("a rejection needs a reason (it is recorded)")
        count = moderation.reject(db, message_id, visitor.actor, reason.strip())
        return [("ok", f"rejected: {message_id} ({count} copies dropped)")]

    return _done(request, visitor, "/held", work)


@router.post("/queue/{delivery_id}/retry")
def retry(request: Request, visitor: Acting, delivery_id: int, back: Text = "/queue") -> Response:
    db = console_of(request).db

    def work() -> list[tuple[str, str]]:
        view = admin.retry_delivery(db, delivery_id, visitor.actor)
        return [("ok", f"delivery {view.id} to {view.recipient} queued for an attempt now")]

    return _done(request, visitor, back, work)


@router.post("/members/{address}/{move}")
def member_state(
    request: Request, visitor: Acting, address: str, move: str, reason: Text = ""
) -> Response:
    db = console_of(request).db

    def work() -> list[tuple[str, str]]:
        if move not in (Move.SUSPEND, Move.RESUME):
            raise RelayError(f"members can be suspended or resumed here, not {move!r}")
        change = membership.change_state(db, address, move, visitor.actor, reason.strip() or None)
        if move == Move.SUSPEND:
            text = f"member suspended: {change.address}; {change.cancelled} unsent copies cancelled"
        else:
            text = f"member resumed: {change.address}"
        return [("ok", text)]

    return _done(request, visitor, "/members", work)


# Reading a message: the one place embargoed text is shown


@router.post("/messages/{message_id}/read")
def read_message(request: Request, visitor: Acting, message_id: str, back: Text = "/") -> Response:
    console = console_of(request)
    try:
        shown = viewing.read_message(console.db, console.spool, message_id, visitor.actor)
    except RelayError as exc:
        flashes_of(request).add(visitor.secret, "error", str(exc))
        return RedirectResponse(safe_next(back), 303)
    return render(request, "message.html", visitor, message=shown, back=safe_next(back))

"""The console's pages (GET): what the CLI's listings show, read through the same
`relay.app` view functions, one page per concern. Embargoed text never appears on a page;
reading a message is an action (relay/web/actions.py) that leaves an audit row."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from relay.app import (
    admin,
    advisories,
    advisory_admin,
    audit_chain,
    grants,
    incidents,
    members,
    moderation,
    status,
)
from relay.app.advisory_admin import AdvisoryReport, AdvisoryView
from relay.model import AdvisoryState, DeliveryStatus, utcnow
from relay.web.auth import Visitor, console_of, logged_in, visitor_of
from relay.web.rendering import render

router = APIRouter(include_in_schema=False)
Page = Annotated[Visitor, Depends(logged_in)]

STATES = [s.value for s in DeliveryStatus]
_EXPLAINED = (DeliveryStatus.HELD, DeliveryStatus.FAILED, DeliveryStatus.DEFERRED)
_CHANGES = ("advisory.created", "advisory.scheduled", "advisory.moved")


@router.get("/login", response_class=HTMLResponse)
def login_page(request: Request, next: str = "/") -> Response:
    if visitor_of(request) is not None:
        return RedirectResponse(safe_next(next), 303)
    return render(request, "login.html", None, next=safe_next(next))


def safe_next(target: str) -> str:
    """Only a path on this console: never another site after the login."""
    return target if target.startswith("/") and not target.startswith(("//", "/\\")) else "/"


# Advisories


@dataclass(frozen=True)
class Listed:
    advisory: AdvisoryView
    title: str
    pending: int
    warnings: list[str]


def _warnings(report: AdvisoryReport) -> list[str]:
    """The policy's warnings about the lift time in force: those of its latest change."""
    for row in reversed(report.history):
        if row.action in _CHANGES:
            return [str(w) for w in row.detail.get("warnings") or []]
    return []


@router.get("/", response_class=HTMLResponse)
def advisory_list(request: Request, visitor: Page, all: bool = False) -> Response:
    db = console_of(request).db
    listed = []
    for view in advisory_admin.list_advisories(db, include_closed=all):
        report = advisory_admin.advisory_report(db, view.id)
        title = advisories.plain_title(view.title, view.id)
        listed.append(Listed(view, title, len(report.pending), _warnings(report)))
    return render(request, "advisories.html", visitor, listed=listed, show_all=all)


@dataclass
class MatrixRow:
    recipient: str
    counts: dict[str, int] = field(default_factory=dict)
    reasons: list[str] = field(default_factory=list)
    retryable: list[int] = field(default_factory=list)  # delivery ids


def delivery_matrix(request: Request, report: AdvisoryReport) -> list[MatrixRow]:
    """Each recipient × delivery state, with the words of every held, failed or deferred copy."""
    ids = {d.message_id for d in report.deliveries}
    rows: dict[str, MatrixRow] = {}
    for d in admin.list_deliveries(console_of(request).db, include_sent=True):
        if d.message_id not in ids:
            continue
        row = rows.setdefault(d.recipient, MatrixRow(d.recipient))
        row.counts[d.status] = row.counts.get(d.status, 0) + 1
        if d.status in _EXPLAINED:
            words = " ".join(filter(None, [d.last_code, d.last_reason])) or "no reason recorded"
            row.reasons.append(f"{d.status}: {words} (copy {d.id} of {d.message_id})")
            row.retryable.append(d.id)
    return sorted(rows.values(), key=lambda r: r.recipient)


def _messages(report: AdvisoryReport) -> list[tuple[str, str]]:
    seen: dict[str, str] = {}
    for d in report.deliveries:
        seen.setdefault(d.message_id, d.kind)
    return sorted(seen.items())


@router.get("/advisories/{advisory_id}", response_class=HTMLResponse)
def advisory_page(request: Request, visitor: Page, advisory_id: str) -> Response:
    db = console_of(request).db
    report = advisory_admin.advisory_report(db, advisory_id)
    a = report.advisory
    return render(
        request,
        "advisory.html",
        visitor,
        report=report,
        a=a,
        title=advisories.plain_title(a.title, a.id),
        embargoed=a.state == AdvisoryState.EMBARGOED,
        warnings=_warnings(report),
        matrix=delivery_matrix(request, report),
        states=STATES,
        messages=_messages(report),
        grants=grants.list_grants(db, a.id),
        incidents=incidents.list_incidents(db, advisory_id=a.id),
        public_addresses=console_of(request).settings.embargo.public_addresses,
    )


@router.get("/advisories/{advisory_id}/deliveries", response_class=HTMLResponse)
def advisory_deliveries(request: Request, visitor: Page, advisory_id: str) -> Response:
    """The delivery matrix alone: console.js replaces the page's copy with it every 2 s."""
    report = advisory_admin.advisory_report(console_of(request).db, advisory_id)
    matrix = delivery_matrix(request, report)
    return render(
        request, "_deliveries.html", visitor, a=report.advisory, matrix=matrix, states=STATES
    )


# Moderation, queue, members, incidents


@router.get("/held", response_class=HTMLResponse)
def held_page(request: Request, visitor: Page) -> Response:
    posts = moderation.held_posts(console_of(request).db)
    return render(request, "held.html", visitor, posts=posts)


@router.get("/queue", response_class=HTMLResponse)
def queue_page(request: Request, visitor: Page, all: bool = False) -> Response:
    deliveries = admin.list_deliveries(console_of(request).db, include_sent=all)
    return render(request, "queue.html", visitor, deliveries=deliveries, show_all=all)


@dataclass(frozen=True)
class KeyHealth:
    fingerprint: str
    status: str
    expires_at: Any
    warn: bool


@router.get("/members", response_class=HTMLResponse)
def members_page(request: Request, visitor: Page) -> Response:
    console = console_of(request)
    window: timedelta = console.settings.members.key_expiry_warning
    now = utcnow()
    shown = []
    for view in members.list_members(console.db, console.crypto):
        detail = members.member_detail(console.db, console.crypto, view.address)
        keys = []
        for k in detail.keys:
            state = k.status
            if state == "usable" and k.expires_at is not None and k.expires_at - now <= window:
                state = "expiring"  # as `relay key check` calls it
            keys.append(KeyHealth(k.fingerprint, state, k.expires_at, state != "usable"))
        shown.append((view, keys))
    return render(request, "members.html", visitor, members=shown)


@router.get("/incidents", response_class=HTMLResponse)
def incidents_page(request: Request, visitor: Page) -> Response:
    found = incidents.list_incidents(console_of(request).db)
    return render(request, "incidents.html", visitor, incidents=found)


# Audit and health


@router.get("/audit", response_class=HTMLResponse)
def audit_page(request: Request, visitor: Page, limit: int = 200) -> Response:
    rows = advisory_admin.audit_trail(console_of(request).db, None, max(1, min(limit, 5000)))
    return render(
        request,
        "audit.html",
        visitor,
        rows=rows,
        check=audit_chain.verify_chain(console_of(request).db),
    )


@router.get("/health", response_class=HTMLResponse)
def health_page(request: Request, visitor: Page) -> Response:
    console = console_of(request)
    report = status.status(console.db, console.settings, utcnow())
    return render(request, "health.html", visitor, status=report)

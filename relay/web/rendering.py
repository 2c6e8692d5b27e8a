"""The console's pages: Jinja2 templates (autoescaped), the filters they use, and what
every page gets (the visitor, its CSRF token, its flash messages, the links)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates
from jinja2 import Environment, FileSystemLoader, select_autoescape

from relay.core.times import countdown, format_when
from relay.model import utcnow
from relay.web.auth import Visitor, console_of
from relay.web.flash import Flashes

HERE = Path(__file__).resolve().parent
STATIC = HERE / "static"


def _when(value: datetime | None, zone: str | None = None) -> str:
    return "not set" if value is None else format_when(value, zone)


def _iso(value: datetime | None) -> str:
    """UTC in ISO 8601 with a Z, what console.js reads from data-lift."""
    if value is None:
        return ""
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _countdown(value: datetime | None) -> str:
    return "" if value is None else countdown(value, utcnow())


def _shown(value: Any) -> str:
    """An audit value for people, as the CLI prints it: times in UTC with the zone."""
    if value is None:
        return "-"
    if isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            return value
        return format_when(moment) if moment.tzinfo is not None else value
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return "; ".join(value) or "-"
    return json.dumps(value, ensure_ascii=False)


def environment() -> Environment:
    env = Environment(
        loader=FileSystemLoader(HERE / "templates"),
        autoescape=select_autoescape(default=True, default_for_string=True),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(when=_when, iso=_iso, countdown=_countdown, shown=_shown)
    return env


templates = Jinja2Templates(env=environment())


def flashes_of(request: Request) -> Flashes:
    flashes: Flashes = request.app.state.flashes
    return flashes


def metrics_url(request: Request) -> str | None:
    metrics = console_of(request).settings.metrics
    return f"http://{metrics.host}:{metrics.port}/metrics" if metrics.enabled else None


def render(
    request: Request,
    name: str,
    visitor: Visitor | None,
    status_code: int = 200,
    **context: Any,
) -> HTMLResponse:
    settings = console_of(request).settings
    shown = {
        "visitor": visitor,
        "csrf": visitor.csrf if visitor else "",
        "flashes": flashes_of(request).take(visitor.secret) if visitor else [],
        "list_address": settings.list.address,
        "metrics_url": metrics_url(request),
        "now": utcnow(),
        **context,
    }
    return templates.TemplateResponse(request, name, shown, status_code=status_code)


def render_plain(name: str, **context: Any) -> str:
    """A template without a request (the error page of a request that failed)."""
    return templates.env.get_template(name).render(visitor=None, flashes=[], **context)

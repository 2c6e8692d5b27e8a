"""The console as an ASGI application (`create_app`): pages, actions, static files and
the HTTP API, behind one guard that sets the security headers of every response and turns
an unexpected error into a plain 500 page (the traceback goes to the log only)."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.datastructures import MutableHeaders
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from relay.app.advisories import UnknownAdvisory
from relay.app.known import Unknown
from relay.core.errors import RelayError
from relay.web import actions, pages
from relay.web.api import api_router
from relay.web.auth import CsrfRefused, NotLoggedIn, visitor_of
from relay.web.context import Console
from relay.web.flash import Flashes
from relay.web.rendering import STATIC, render, render_plain

log = logging.getLogger("relay.web")

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; "
    "frame-ancestors 'none'; form-action 'self'"
)
_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
HSTS = "max-age=31536000"


class Guard:
    """Security headers on every response; an error nothing else handled becomes a 500
    page (JSON under /api/), logged with its traceback."""

    def __init__(self, app: ASGIApp, https: bool) -> None:
        self.app = app
        self.headers = dict(_HEADERS, **({"Strict-Transport-Security": HSTS} if https else {}))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def sending(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                headers = MutableHeaders(scope=message)
                for name, value in self.headers.items():
                    headers[name] = value
            await send(message)

        try:
            await self.app(scope, receive, sending)
        except Exception:
            log.exception("console request %s %s failed", scope["method"], scope["path"])
            if started:
                raise
            await _internal_error(scope)(scope, receive, sending)


def _internal_error(scope: Scope) -> Response:
    if str(scope["path"]).startswith("/api/"):
        return JSONResponse({"error": "internal error; see the relay's log"}, 500)
    page = render_plain("error.html", title="Internal error", message=None, status=500)
    return HTMLResponse(page, 500)


def _wants_fragment(request: Request) -> bool:
    """A script's request (console.js asks for fragments): it cannot follow a login redirect."""
    return request.headers.get("x-requested-with") == "console"


async def _not_logged_in(request: Request, exc: Exception) -> Response:
    if _wants_fragment(request) or request.url.path.startswith("/api/"):
        return JSONResponse({"detail": "not logged in"}, 401)
    target = request.url.path
    if request.method == "GET" and target != "/":
        return RedirectResponse(f"/login?next={target}", 303)
    return RedirectResponse("/login", 303)


async def _csrf_refused(request: Request, exc: Exception) -> Response:
    return render(request, "error.html", None, 403, title="Refused", message=str(exc), status=403)


async def _refused(request: Request, exc: Exception) -> Response:
    """A use-case's refusal on a page (say, an unknown advisory in the URL)."""
    return render(
        request,
        "error.html",
        visitor_of(request),
        404 if isinstance(exc, (UnknownAdvisory, Unknown)) else 400,
        title="Not shown",
        message=str(exc),
        status=None,
    )


_LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1", "[::1]")


def allowed_hosts(console: Console) -> list[str]:
    """The Host names the console answers to: its own, loopback's and `server_names`."""
    web = console.settings.web
    return sorted({web.host, *_LOOPBACK_NAMES, *web.server_names})


def create_app(console: Console) -> FastAPI:
    # The API's router serves its own OpenAPI document (/api/v1/openapi.json): the
    # console's pages are no part of it.
    app = FastAPI(title="Embargo Relay console", openapi_url=None, docs_url=None, redoc_url=None)
    app.state.console = console
    app.state.flashes = Flashes()
    app.add_exception_handler(NotLoggedIn, _not_logged_in)
    app.add_exception_handler(CsrfRefused, _csrf_refused)
    app.add_exception_handler(RelayError, _refused)
    app.include_router(api_router(console))
    app.include_router(pages.router)
    app.include_router(actions.router)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts(console))
    app.add_middleware(Guard, https=console.settings.web.https)  # outermost: every answer
    return app

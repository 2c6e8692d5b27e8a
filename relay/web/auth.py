"""Who sends a console request: the login session behind its cookie, and the CSRF token
every form carries.

The cookie holds only the session's secret (relay/app/admins.py keeps its hash and its
expiry): `HttpOnly` so no script reads it, `SameSite=Strict` so no other site's page
sends it, `Secure` when the console speaks HTTPS. A POST must also carry the session's
CSRF token in its form, compared in constant time; one that does not changes nothing.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass

from fastapi import Form, Request, Response

from relay.app import admins
from relay.app.admins import WebSession
from relay.store import audit
from relay.web.context import Console

COOKIE = "relay_session"


class NotLoggedIn(Exception):
    """No live session: pages redirect to /login, fragments answer 401."""


class CsrfRefused(Exception):
    """A POST without the session's CSRF token, or from another origin: 403."""


@dataclass(frozen=True)
class Visitor:
    """A logged-in administrator and the secret of its session."""

    secret: str
    session: WebSession

    @property
    def admin(self) -> str:
        return self.session.admin

    @property
    def actor(self) -> str:
        return audit.web_actor(self.session.admin)

    @property
    def csrf(self) -> str:
        return self.session.csrf


def console_of(request: Request) -> Console:
    console: Console = request.app.state.console
    return console


def client_address(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def visitor_of(request: Request) -> Visitor | None:
    """The session behind the request's cookie; None when there is none or it ended."""
    secret = request.cookies.get(COOKIE)
    if not secret:
        return None
    console = console_of(request)
    session = admins.session_of(console.db, secret, console.settings.web)
    return None if session is None else Visitor(secret, session)


def logged_in(request: Request) -> Visitor:
    """A page's dependency: the visitor, or NotLoggedIn."""
    visitor = visitor_of(request)
    if visitor is None:
        raise NotLoggedIn()
    return visitor


def acting(request: Request, csrf: str = Form("")) -> Visitor:
    """An action's dependency: a visitor whose form carries its session's CSRF token."""
    visitor = logged_in(request)
    same_origin(request)
    if not hmac.compare_digest(csrf.encode(), visitor.csrf.encode()):
        raise CsrfRefused("the form's security token is missing or wrong; reload the page")
    return visitor


def same_origin(request: Request) -> None:
    """Refuse a POST the browser says came from another site (the login form too).
    Sec-Fetch-Site says so whatever the referrer policy; an Origin is "null" under
    ours (no-referrer), so only a real one is compared."""
    site = request.headers.get("sec-fetch-site")
    if site is not None and site not in ("same-origin", "none"):
        raise CsrfRefused("the form was sent from another site")
    origin = request.headers.get("origin")
    if origin is None or origin == "null":
        return
    own = f"{request.url.scheme}://{request.headers.get('host', '')}"
    if not hmac.compare_digest(origin.encode(), own.encode()):
        raise CsrfRefused("the form was sent from another site")


def set_cookie(response: Response, console: Console, secret: str) -> None:
    # No Max-Age: the browser forgets it at exit; the server ends it sooner (settings.web).
    response.set_cookie(
        COOKIE,
        secret,
        path="/",
        httponly=True,
        samesite="strict",
        secure=console.settings.web.https,
    )


def clear_cookie(response: Response, console: Console) -> None:
    response.delete_cookie(
        COOKIE, path="/", httponly=True, samesite="strict", secure=console.settings.web.https
    )

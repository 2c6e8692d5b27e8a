"""The HTTP API under /api/v1: what the CLI does, for scripts, with a bearer token.

Every endpoint needs `Authorization: Bearer <token>` (a token from relay/app/admins.py);
without a live one it answers 401 with `WWW-Authenticate: Bearer`. Each action calls the
use-case the matching CLI command calls, audited as `web:<admin>`, so no rule lives here
twice. Refusals are JSON (relay/web/api_errors.py); the shapes are relay/web/api_models.py,
and the router serves its own OpenAPI document at /api/v1/openapi.json.
"""

# No `from __future__ import annotations`: FastAPI reads the handlers' annotations.
from collections.abc import Callable
from http import HTTPStatus
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.routing import Match

from relay.app import admins
from relay.web import api_advisories, api_operations
from relay.web.api_errors import ApiRoute, Refused
from relay.web.context import Console

PREFIX = "/api/v1"
OPENAPI_PATH = "/openapi.json"
TITLE = "Embargo Relay API"
VERSION = "1"
DESCRIPTION = """\
The operator's console API: advisories and their embargoes, posts held for moderation,
deliveries, members, incidents and the audit trail. Every endpoint needs a bearer token
(`Authorization: Bearer <token>`); each action is audited as `web:<admin>`. Refusals are
`{"error": "..."}`: 401 without a live token, 404 for an unknown name, 409 for a state
that forbids the change, 422 for input that cannot be used. Times are ISO 8601 in UTC with
the offset; a lift time is accepted in any zone, never without one.
"""

_bearer = HTTPBearer(
    auto_error=False,
    scheme_name="bearer",
    description="A token issued to an administrator by `relay admin token NAME`.",
)


def _unauthorised(message: str) -> Refused:
    return Refused(HTTPStatus.UNAUTHORIZED, message, {"WWW-Authenticate": "Bearer"})


def bearer_admin(console: Console) -> Callable[..., str]:
    """The dependency naming the administrator whose live token the request carries."""

    def admin(
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    ) -> str:
        if credentials is None:
            raise _unauthorised("this API needs a bearer token: Authorization: Bearer <token>")
        name = admins.token_admin(console.db, credentials.credentials)
        if name is None:
            raise _unauthorised("the bearer token is unknown or revoked")
        return name

    return admin


def api_router(console: Console) -> APIRouter:
    """The API's routes, for `app.include_router`; they answer under /api/v1."""
    router = APIRouter(prefix=PREFIX, route_class=ApiRoute)
    admin = bearer_admin(console)
    api_advisories.add_routes(router, console, admin)
    api_operations.add_routes(router, console, admin)
    _add_openapi(router)
    _add_fallback(router, admin)
    return router


def _add_openapi(router: APIRouter) -> None:
    """The document of this router alone: the console's pages are no part of the API."""
    cached: dict[str, Any] = {}
    api_routes = list(router.routes)

    @router.get(OPENAPI_PATH, include_in_schema=False)
    def openapi() -> JSONResponse:
        if not cached:
            cached.update(
                get_openapi(
                    title=TITLE, version=VERSION, description=DESCRIPTION, routes=api_routes
                )
            )
        return JSONResponse(cached)


def _add_fallback(router: APIRouter, admin: Callable[..., str]) -> None:
    """Any other path under /api/v1 answers in the API's JSON, not the console's page."""
    api_routes = list(router.routes)

    @router.api_route(
        "/{path:path}",
        methods=["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"],
        include_in_schema=False,
    )
    def fallback(request: Request, _admin: Annotated[str, Depends(admin)]) -> None:
        if any(r.matches(request.scope)[0] == Match.PARTIAL for r in api_routes):
            raise Refused(HTTPStatus.METHOD_NOT_ALLOWED, f"{request.method} is not allowed here")
        raise Refused(HTTPStatus.NOT_FOUND, f"no API endpoint {request.url.path}")

"""How the HTTP API refuses: always JSON `{"error": "..."}`, never a traceback.

A use-case's refusal (`RelayError`) keeps its message and gets a status by its kind: 404
for something the relay does not hold, 409 for a state that forbids the change (lifted,
cancelled, already suspended), 422 for input that cannot be used (a time without a zone,
a lift in the past, a rule of the list's policy). A refusal of no particular kind gets
the status its endpoint names with `refused_as`, else 409. `ApiRoute` renders these, the
request's own validation errors and the bearer check's 401 the same way, inside the
router, so the API answers alike whatever application includes it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine, Mapping
from http import HTTPStatus
from typing import Any, TypeVar

from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException

from relay.app import known
from relay.app.advisories import (
    AdvisoryClosed,
    EmbargoTimeUnreadable,
    ScheduleRefused,
    UnknownAdvisory,
)
from relay.app.confirmations import ConfirmationError
from relay.app.known import Unknown
from relay.core.addresses import AddressRefused
from relay.core.database import Database
from relay.core.errors import RelayError
from relay.policy.timing import PolicyError
from relay.web.api_models import ErrorOut

log = logging.getLogger("relay.web.api")

F = TypeVar("F", bound=Callable[..., Any])

_BY_KIND: tuple[tuple[type[RelayError], HTTPStatus], ...] = (
    (Unknown, HTTPStatus.NOT_FOUND),
    (UnknownAdvisory, HTTPStatus.NOT_FOUND),
    (AdvisoryClosed, HTTPStatus.CONFLICT),
    (ConfirmationError, HTTPStatus.CONFLICT),
    (ScheduleRefused, HTTPStatus.UNPROCESSABLE_ENTITY),
    (EmbargoTimeUnreadable, HTTPStatus.UNPROCESSABLE_ENTITY),
    (AddressRefused, HTTPStatus.UNPROCESSABLE_ENTITY),
    (PolicyError, HTTPStatus.UNPROCESSABLE_ENTITY),
)


class Refused(Exception):
    """An answer other than success, with its status and message."""

    def __init__(self, status: int, message: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = dict(headers or {})


def status_of(exc: RelayError, default: int = HTTPStatus.CONFLICT) -> int:
    """The HTTP status of a use-case's refusal."""
    return next((status for kind, status in _BY_KIND if isinstance(exc, kind)), default)


def require_known(db: Database, kind: known.Kind, value: str | int) -> None:
    """`known.require`, as the CLI checks a name: 404 for one the relay does not hold,
    422 for one that cannot name anything (an address that is not one)."""
    try:
        known.require(db, kind, value)
    except Unknown:
        raise
    except RelayError as exc:
        raise Refused(HTTPStatus.UNPROCESSABLE_ENTITY, str(exc)) from None


def refused_as(status: int) -> Callable[[F], F]:
    """The status of an endpoint's refusals of no particular kind (see `status_of`)."""

    def mark(endpoint: F) -> F:
        endpoint.refused_as = status  # type: ignore[attr-defined]
        return endpoint

    return mark


def error_response(
    status: int, message: str, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(ErrorOut(error=message).model_dump(), status, headers=dict(headers or {}))


def _problems(exc: RequestValidationError) -> str:
    """'body.lift: Field required; query.limit: ...': where each problem is, and what."""
    parts = []
    for problem in exc.errors():
        where = ".".join(str(p) for p in problem.get("loc", ()))
        parts.append(f"{where}: {problem.get('msg', 'invalid')}" if where else problem["msg"])
    return "; ".join(parts) or "the request is not valid"


class ApiRoute(APIRoute):
    """An API route whose every answer other than success is `ErrorOut` JSON."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        default = getattr(self.endpoint, "refused_as", HTTPStatus.CONFLICT)

        async def answer(request: Request) -> Response:
            try:
                return await handler(request)
            except Refused as exc:
                return error_response(exc.status, exc.message, exc.headers)
            except RelayError as exc:
                return error_response(status_of(exc, default), str(exc))
            except RequestValidationError as exc:
                return error_response(HTTPStatus.UNPROCESSABLE_ENTITY, _problems(exc))
            except HTTPException as exc:
                return error_response(exc.status_code, str(exc.detail), exc.headers)
            except Exception:
                log.exception("internal error answering %s %s", request.method, request.url.path)
                return error_response(HTTPStatus.INTERNAL_SERVER_ERROR, "internal error")

        return answer


def responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI entries of an endpoint's refusals (401 is every endpoint's)."""
    words = {
        401: "No bearer token, or one that is unknown or revoked.",
        404: "Nothing the relay holds by that name.",
        409: "The state of what it names forbids the change.",
        422: "Input that cannot be used; nothing changed.",
    }
    return {s: {"model": ErrorOut, "description": words[s]} for s in (401, *statuses)}

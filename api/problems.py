"""RFC 9457 problem details: every error the API returns says what was wrong and how to fix it."""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from api.storeerrors import RequestDataRejected, StoreBug
from core.errors import CityIngestError

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"
# RFC 9110's names where Python's table (3.11) still has the older ones.
_TITLES = {413: "Content Too Large", 422: "Unprocessable Content"}


def status_title(status: int) -> str:
    """The reason phrase of an HTTP status: the title of a problem raised as a plain HTTP error."""
    try:
        return _TITLES.get(status) or HTTPStatus(status).phrase
    except ValueError:
        return str(status)


class Problem(Exception):
    """An error answered as ``application/problem+json``."""

    def __init__(
        self, status: int, title: str, detail: str, *, headers: dict[str, str] | None = None, **extra: Any
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.title = title
        self.detail = detail
        self.headers = headers
        self.extra = extra


def problem_response(
    status: int,
    title: str,
    detail: str,
    instance: str,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> JSONResponse:
    """A problem+json response."""
    body = {"type": "about:blank", "title": title, "status": status, "detail": detail, "instance": instance}
    body.update(extra)
    return JSONResponse(body, status_code=status, media_type=PROBLEM_JSON, headers=headers)


def store_down_problem() -> Problem:
    """The 503 problem of a store outage."""
    return Problem(
        503,
        "Store unavailable",
        "the database did not answer; retry shortly (GET /readyz shows when it is back)",
        headers={"Retry-After": "5"},
    )


def error_problem(exc: Exception, path: str) -> Problem:
    """The problem answering an error that escaped a route (logged here, once); never leaks internals.

    Branches on our classes only: a retriable error is a 503 with ``Retry-After``, data the store refused
    because of the request a 422, anything else a 500 (a bug, logged with its SQLSTATE when it has one).
    """
    if isinstance(exc, ExceptionGroup) and len(exc.exceptions) == 1:
        # A task group around the failing call wraps it; the one error inside decides.
        exc = exc.exceptions[0]
    if isinstance(exc, CityIngestError) and exc.retriable:
        log.warning("store unavailable while serving %s: %s", path, exc)
        return store_down_problem()
    if isinstance(exc, RequestDataRejected):
        return Problem(422, "Rejected by the store", exc.detail)
    if isinstance(exc, StoreBug):
        log.error("store error (SQLSTATE %s) serving %s: %s", exc.sqlstate, path, exc, exc_info=exc)
    elif isinstance(exc, CityIngestError):
        # Ours, and its message names the cause (with the SQLSTATE when the store gave one).
        log.error("%s serving %s: %s", type(exc).__name__, path, exc, exc_info=exc)
    else:
        log.error("unhandled error serving %s: %r", path, exc, exc_info=exc)
    return Problem(500, "Internal error", "the API failed on this request; the operators have the log")


def install_problem_handlers(app: FastAPI) -> None:
    """Answer our own, FastAPI's validation and Starlette's HTTP errors, and any other, as problem+json."""

    async def on_problem(request: Request, exc: Exception) -> JSONResponse:
        if not isinstance(exc, Problem):
            raise exc
        return problem_response(exc.status, exc.title, exc.detail, request.url.path, exc.headers, **exc.extra)

    async def on_validation(request: Request, exc: Exception) -> JSONResponse:
        if not isinstance(exc, RequestValidationError):
            raise exc
        errors = [
            {"location": ".".join(str(p) for p in err["loc"]), "message": err["msg"]} for err in exc.errors()
        ]
        detail = "; ".join(f"{e['location']}: {e['message']}" for e in errors)
        return problem_response(422, "Invalid request", detail, request.url.path, errors=errors)

    async def on_http(request: Request, exc: Exception) -> JSONResponse:
        if not isinstance(exc, StarletteHTTPException):
            raise exc
        headers = dict(exc.headers) if exc.headers else None
        title = status_title(exc.status_code)
        return problem_response(exc.status_code, title, str(exc.detail), request.url.path, headers)

    async def on_error(request: Request, exc: Exception) -> JSONResponse:
        problem = error_problem(exc, request.url.path)
        return problem_response(
            problem.status, problem.title, problem.detail, request.url.path, problem.headers
        )

    app.add_exception_handler(Problem, on_problem)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)
    # Answered (and logged) once here; Starlette re-raises what reaches its outermost handler (Exception,
    # which also catches the middlewares' errors) so that the server logs it a second time.
    app.add_exception_handler(CityIngestError, on_error)
    app.add_exception_handler(ExceptionGroup, on_error)
    app.add_exception_handler(Exception, on_error)

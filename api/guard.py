"""The request-body guard in front of the API: no body is read before its size and its key are checked.

FastAPI reads and parses a route's body before it resolves the route's dependencies, so without this a
client without a key could make the API buffer any amount of data before being told 401. For every
request that announces a body, in this order and before reading a byte of it:

1. a ``Content-Length`` above ``CITYINGEST_MAX_BODY_BYTES`` is a 413 problem;
2. on a route that needs a key (:func:`api.auth.require`), a missing, unknown or revoked key is a 401,
   a key without the route's scope a 403.

A body sent without ``Content-Length`` (chunked) is counted as it is read and refused with 413 the
moment it passes the limit, so the API never holds more than the limit of one request's body.
"""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.routing import APIRoute, iter_route_contexts
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.auth import Scope as KeyScope
from api.auth import authorize, bearer_credentials, required_scope
from api.problems import Problem, error_problem, problem_response, status_title
from core.errors import CityIngestError


class BodyTooLarge(HTTPException):
    """A body that grew past the limit while it was read; FastAPI lets HTTPExceptions through unchanged."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, _too_large(limit))


def _too_large(limit: int) -> str:
    return (
        f"the request body is larger than {limit} bytes, the most this API reads "
        "(CITYINGEST_MAX_BODY_BYTES); send a smaller body"
    )


class BodyGuard:
    """ASGI middleware: size limit and key check before any request body is read."""

    def __init__(self, app: ASGIApp, api: FastAPI, max_body_bytes: int) -> None:
        self.app = app
        self.api = api
        self.limit = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        length_text = headers.get("content-length")
        chunked = "transfer-encoding" in headers
        try:
            length = int(length_text) if length_text is not None else None
        except ValueError:
            length = None
        if length_text is not None and (length is None or length < 0):
            await self._refuse(
                scope,
                receive,
                send,
                Problem(
                    400, "Bad Content-Length", "Content-Length must be a byte count (a non-negative integer)"
                ),
            )
            return
        if length is not None and length > self.limit:
            await self._refuse(scope, receive, send, Problem(413, status_title(413), _too_large(self.limit)))
            return
        if (length or chunked) and (needed := self._scope_of(scope)) is not None:
            request = Request(scope)
            try:
                await authorize(request, bearer_credentials(headers.get("authorization")), needed)
            except Problem as problem:
                await self._refuse(scope, receive, send, problem)
                return
            except CityIngestError as exc:
                await self._refuse(scope, receive, send, error_problem(exc, scope["path"]))
                return
        await self.app(scope, self._capped(receive), send)

    def _scope_of(self, scope: Scope) -> KeyScope | None:
        # FastAPI keeps included routers nested; their contexts hold the routes with full paths.
        for context in iter_route_contexts(self.api.routes):
            route = context.route
            if isinstance(route, APIRoute):
                match, _ = route.matches(scope)
                if match == Match.FULL:
                    return required_scope(route.dependant)
        return None

    def _capped(self, receive: Receive) -> Receive:
        read = 0

        async def capped() -> Message:
            nonlocal read
            message = await receive()
            if message["type"] == "http.request":
                read += len(message.get("body", b""))
                if read > self.limit:
                    raise BodyTooLarge(self.limit)
            return message

        return capped

    async def _refuse(self, scope: Scope, receive: Receive, send: Send, problem: Problem) -> None:
        response = problem_response(
            problem.status, problem.title, problem.detail, scope["path"], problem.headers, **problem.extra
        )
        # The unread body is the server's to discard; a 413 or 401 asks the client not to continue.
        response.headers["Connection"] = "close"
        await response(scope, receive, send)

"""Driver errors translated once, where they enter the API: above the query modules only our classes exist.

Every function of the SQL modules (:mod:`api.queries`, :mod:`api.key_queries`, :mod:`api.report_queries`,
:mod:`api.ops.queries`) is wrapped by :func:`translated`, so a route, the body guard or the health check
never sees an asyncpg or socket error:

- connection and resource trouble (SQLSTATE classes 08, 53, 57, 58; ``OSError``; timeouts; the driver's
  interface errors, a closed pool among them) -> :class:`core.errors.StoreUnavailable` (retriable, 503);
- a connection refused for its credentials or database name (classes 28, 3D) ->
  :class:`core.errors.ConfigError`: the operator's to fix, and the API is not ready meanwhile;
- data the store refuses (classes 22, 23, 54) -> :class:`core.errors.StoreRejectedData`, or
  :class:`RequestDataRejected` when the statement carried the request's values (the client's to fix);
- anything else (42 undefined table, syntax, ...) -> :class:`StoreBug`: no retry or client can fix it.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Final, ParamSpec, TypeVar

import asyncpg

from core.errors import CityIngestError, ConfigError, StoreRejectedData, StoreUnavailable

P = ParamSpec("P")
T = TypeVar("T")

UNAVAILABLE_CLASSES: Final = frozenset({"08", "53", "57", "58"})
"""Connection exception, insufficient resources, operator intervention, system error."""
REJECTED_CLASSES: Final = frozenset({"22", "23", "54"})
"""Data exception, integrity constraint violation, program limit exceeded."""
CONFIG_CLASSES: Final = frozenset({"28", "3D"})
"""Invalid authorization specification, invalid catalog name: CITYINGEST_DATABASE_URL is wrong."""
_TEXT_STATES: Final = frozenset({"22021", "22P05"})
"""Text PostgreSQL cannot hold (NUL, a character without a server encoding)."""


class StoreBug(CityIngestError):
    """The store refused a statement for a reason neither a retry nor the client can fix: a bug."""

    def __init__(self, sqlstate: str | None, message: str) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate


class RequestDataRejected(StoreRejectedData):
    """The store refused a value the request carried; ``detail`` tells the client what to change."""

    def __init__(self, sqlstate: str, detail: str) -> None:
        super().__init__(detail)
        self.sqlstate = sqlstate
        self.detail = detail


def sqlstate_of(exc: BaseException) -> str | None:
    """The SQLSTATE of a server error; None for anything else."""
    state = getattr(exc, "sqlstate", None) if isinstance(exc, asyncpg.PostgresError) else None
    return state if isinstance(state, str) else None


def translate(exc: Exception, *, request_data: bool) -> CityIngestError | None:
    """Our error for driver error ``exc``; None when ``exc`` is not the store's (ours, or a plain bug).

    ``request_data``: the statement carried values of the request, so refused data is the client's.
    """
    if isinstance(exc, CityIngestError):
        return None
    state = sqlstate_of(exc)
    if isinstance(exc, asyncpg.PostgresError):
        code = state or "?????"
        if code[:2] in UNAVAILABLE_CLASSES:
            return StoreUnavailable(f"the database cannot serve now (SQLSTATE {code})")
        if code[:2] in CONFIG_CLASSES:
            return ConfigError(
                f"the database refused the connection (SQLSTATE {code}); check CITYINGEST_DATABASE_URL"
            )
        if code[:2] in REJECTED_CLASSES:
            if request_data:
                return RequestDataRejected(code, _client_detail(code))
            return StoreRejectedData(f"the database refused stored data (SQLSTATE {code})")
        return StoreBug(state, f"the database refused a statement (SQLSTATE {code}): {type(exc).__name__}")
    if isinstance(exc, asyncpg.InterfaceError) and isinstance(exc, ValueError):
        # The driver could not encode an argument (its DataError): a value of the wrong type is our bug,
        # not an outage.
        return StoreBug(None, f"the driver could not encode an argument: {exc}")
    if isinstance(exc, OSError | TimeoutError | asyncpg.InterfaceError | asyncpg.InternalClientError):
        return StoreUnavailable(f"the database did not answer ({type(exc).__name__})")
    return None


def _client_detail(code: str) -> str:
    if code in _TEXT_STATES:
        return (
            "a text parameter or field holds a character the store cannot keep; "
            "remove NUL (U+0000) characters and send valid UTF-8"
        )
    if code[:2] == "23":
        return "the request conflicts with a rule of the stored data (a constraint); check its values"
    if code[:2] == "54":
        return "a value of the request is larger than the store can keep; send a shorter one"
    return "a value of the request is out of range or malformed for the store; check its values"


def translated(
    request_data: bool,
) -> Callable[[Callable[P, Awaitable[T]]], Callable[P, Awaitable[T]]]:
    """Decorate a query function so that driver errors leave it as our classes (see :func:`translate`)."""

    def wrap(query: Callable[P, Awaitable[T]]) -> Callable[P, Awaitable[T]]:
        @functools.wraps(query)
        async def call(*args: P.args, **kwargs: P.kwargs) -> T:
            try:
                return await query(*args, **kwargs)
            except Exception as exc:
                ours = translate(exc, request_data=request_data)
                if ours is None:
                    raise
                raise ours from exc

        return call

    return wrap

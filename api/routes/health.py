"""``/healthz`` (the process is up) and ``/readyz`` (the database answers): open, no key needed."""

from __future__ import annotations

import asyncio

import asyncpg
from fastapi import APIRouter, Request

from api.ops import queries
from api.problems import Problem
from core.errors import ConfigError, StoreUnavailable

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The API process is up."""
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(request: Request) -> dict[str, str]:
    """The API can answer queries: its database is reachable.

    With dynamic security on, ``device_credentials`` says whether the broker can be told about
    credentials (``connected`` or ``broker unreachable``); an unreachable broker does not make the API
    unready: everything else is served, the credentials routes answer 503.
    """
    pool: asyncpg.Pool = request.app.state.pool
    timeout: float = request.app.state.settings.ready_timeout_s
    try:
        async with asyncio.timeout(timeout):
            await queries.ping(pool)
    except (TimeoutError, StoreUnavailable, ConfigError) as exc:
        # An outage or a refused connection makes the API unready; any other error is a bug (a 500).
        reason = f"the database did not answer within {timeout:g} s" if isinstance(exc, TimeoutError) else exc
        raise Problem(
            503,
            "Not ready",
            f"{reason}; check that PostgreSQL is running and CITYINGEST_DATABASE_URL points at it",
            headers={"Retry-After": "5"},
        ) from None
    accounts = request.app.state.accounts
    if accounts is None:
        return {"status": "ready"}
    broker = "connected" if accounts.dynsec.connected else "broker unreachable"
    return {"status": "ready", "device_credentials": broker}

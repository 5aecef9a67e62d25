"""``/healthz`` (the process is up) and ``/readyz`` (the database answers): open, no key needed."""

from __future__ import annotations

import asyncio

import asyncpg
from fastapi import APIRouter, Request

from api.problems import Problem

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The API process is up."""
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(request: Request) -> dict[str, str]:
    """The API can answer queries: its database is reachable."""
    pool: asyncpg.Pool = request.app.state.pool
    timeout: float = request.app.state.settings.ready_timeout_s
    try:
        async with asyncio.timeout(timeout):
            await pool.fetchval("SELECT 1")
    except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        raise Problem(
            503,
            "Not ready",
            f"the database does not answer ({type(exc).__name__}); check that PostgreSQL is running "
            "and CITYINGEST_DATABASE_URL points at it",
        ) from None
    return {"status": "ready"}

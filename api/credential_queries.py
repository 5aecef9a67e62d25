"""The SQL of device credentials (table ``device_credentials``), with ``$n`` parameters.

Whoever changes device credentials or pushes them to the broker does it inside :func:`locked`: one
transaction holding one advisory lock, so API replicas and their reconcilers never interleave their
writes to the broker (a reconciler that finds the lock taken skips its pass: another one is at work).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Final

import asyncpg

from api.storeerrors import translated

Connection = asyncpg.pool.PoolConnectionProxy
Record = asyncpg.Record

_LOCK_KEY: Final = 0x0C171D5C  # "cityingest device credentials"
_COLUMNS: Final = """c.credential_id, c.device_id, c.generation, c.nonce, c.password_hash, c.key_id,
    c.issued_at, c.revoked_at, c.certificate_serial, c.certificate_sha256, c.certificate_not_after"""


@contextlib.asynccontextmanager
async def locked(pool: asyncpg.Pool) -> AsyncIterator[Connection]:
    """A connection in a transaction holding the credentials lock (waits for it)."""
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _LOCK_KEY)
        yield conn


@contextlib.asynccontextmanager
async def try_locked(pool: asyncpg.Pool) -> AsyncIterator[Connection | None]:
    """Like :func:`locked`, but None at once when another holds the lock."""
    async with pool.acquire() as conn, conn.transaction():
        yield conn if await conn.fetchval("SELECT pg_try_advisory_xact_lock($1)", _LOCK_KEY) else None


@translated(request_data=True)
async def device_for_update(conn: Connection, device_id: str) -> Record | None:
    """The device's domain and status, row-locked, or None."""
    return await conn.fetchrow(
        "SELECT device_id, domain, status FROM devices WHERE device_id = $1 FOR UPDATE", device_id
    )


@translated(request_data=True)
async def live(conn: Connection, device_id: str) -> Record | None:
    """The device's credential that is not revoked, or None."""
    return await conn.fetchrow(
        f"SELECT {_COLUMNS} FROM device_credentials c WHERE c.device_id = $1 AND c.revoked_at IS NULL",  # noqa: S608
        device_id,
    )


@translated(request_data=True)
async def latest(pool: asyncpg.Pool, device_id: str) -> Record | None:
    """The device's newest credential (live or revoked), or None."""
    return await pool.fetchrow(
        f"SELECT {_COLUMNS} FROM device_credentials c WHERE c.device_id = $1 "  # noqa: S608
        "ORDER BY c.generation DESC LIMIT 1",
        device_id,
    )


@translated(request_data=True)
async def revoke(conn: Connection, device_id: str) -> int:
    """Revoke the device's live credential; how many were (0 or 1)."""
    status = await conn.execute(
        "UPDATE device_credentials SET revoked_at = now() WHERE device_id = $1 AND revoked_at IS NULL",
        device_id,
    )
    return int(status.split()[-1])


@translated(request_data=True)
async def insert(
    conn: Connection,
    device_id: str,
    nonce: bytes,
    password_hash: str,
    key_id: str,
    certificate: tuple[str, str, datetime] | None,
) -> Record:
    """A new live credential with the next generation (revoke the live one first)."""
    serial, sha256, not_after = certificate if certificate is not None else (None, None, None)
    row = await conn.fetchrow(
        f"""INSERT INTO device_credentials AS c (device_id, generation, nonce, password_hash, key_id,
                                        certificate_serial, certificate_sha256, certificate_not_after)
        SELECT $1, coalesce(max(generation), 0) + 1, $2, $3, $4, $5, $6, $7
        FROM device_credentials WHERE device_id = $1
        RETURNING {_COLUMNS}""",  # noqa: S608 - fixed column list and placeholders only
        device_id,
        nonce,
        password_hash,
        key_id,
        serial,
        sha256,
        not_after,
    )
    if row is None:  # pragma: no cover - INSERT .. SELECT of an aggregate always yields one row
        raise RuntimeError("the credential was not inserted")
    return row


@translated(request_data=False)
async def wanted(conn: Connection) -> list[Record]:
    """Every live credential of an active device, with the device's domain: what the broker must hold."""
    return await conn.fetch(
        f"""SELECT {_COLUMNS}, d.domain FROM device_credentials c JOIN devices d USING (device_id)
        WHERE c.revoked_at IS NULL AND d.status = 'active' ORDER BY c.device_id"""  # noqa: S608
    )

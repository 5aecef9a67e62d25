"""The SQL of API keys and of the cursor-signing key, with ``$n`` parameters (errors translated)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Final

import asyncpg

from api.storeerrors import translated

Pool = asyncpg.Pool


@dataclass(frozen=True, slots=True)
class KeyRow:
    """What the store holds about one API key."""

    name: str
    secret_sha256: bytes
    scopes: list[str]
    revoked: bool


_KEY_SQL: Final = """
WITH touched AS (
    -- Record use at most once a minute, so reads do not turn into a write per request.
    UPDATE api_keys SET last_used_at = now()
    WHERE key_id = $1 AND secret_sha256 = $2 AND revoked_at IS NULL
      AND (last_used_at IS NULL OR last_used_at < now() - interval '1 minute')
)
SELECT name, secret_sha256, scopes, revoked_at IS NOT NULL AS revoked FROM api_keys WHERE key_id = $1
"""


@translated(request_data=True)
async def api_key(pool: Pool, key_id: str, digest: bytes) -> KeyRow | None:
    """The key ``key_id``, marking it used when ``digest`` matches."""
    row = await pool.fetchrow(_KEY_SQL, key_id, digest)
    if row is None:
        return None
    return KeyRow(row["name"], bytes(row["secret_sha256"]), list(row["scopes"]), row["revoked"])


@translated(request_data=True)
async def insert_api_key(
    conn: asyncpg.Connection, key_id: str, name: str, digest: bytes, scopes: Sequence[str]
) -> None:
    """Store a new key (its hash only)."""
    await conn.execute(
        "INSERT INTO api_keys (key_id, name, secret_sha256, scopes) VALUES ($1, $2, $3, $4)",
        key_id,
        name,
        digest,
        list(scopes),
    )


@dataclass(frozen=True)
class ApiKeyInfo:
    """What an operator may see of a key: everything but its secret's hash."""

    key_id: str
    name: str
    scopes: list[str]
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None


@translated(request_data=True)
async def list_api_keys(conn: asyncpg.Connection) -> list[ApiKeyInfo]:
    """Every key, newest first."""
    rows = await conn.fetch(
        "SELECT key_id, name, scopes, created_at, last_used_at, revoked_at FROM api_keys "
        "ORDER BY created_at DESC, key_id"
    )
    return [
        ApiKeyInfo(
            r["key_id"], r["name"], list(r["scopes"]), r["created_at"], r["last_used_at"], r["revoked_at"]
        )
        for r in rows
    ]


@translated(request_data=True)
async def active_api_key(conn: asyncpg.Connection, key_id: str, digest: bytes) -> list[str] | None:
    """The scopes of key ``key_id`` when its secret hashes to ``digest`` and it is not revoked."""
    scopes = await conn.fetchval(
        "SELECT scopes FROM api_keys WHERE key_id = $1 AND secret_sha256 = $2 AND revoked_at IS NULL",
        key_id,
        digest,
    )
    return None if scopes is None else list(scopes)


@translated(request_data=True)
async def revoke_api_key(conn: asyncpg.Connection, key_id: str) -> bool:
    """Revoke a key; False if there is no such unrevoked key."""
    status = await conn.execute(
        "UPDATE api_keys SET revoked_at = now() WHERE key_id = $1 AND revoked_at IS NULL", key_id
    )
    return bool(status.endswith(" 1"))


_CURSOR_KEY_SQL: Final = """
WITH made AS (INSERT INTO api_cursor_key (secret) VALUES ($1) ON CONFLICT (one) DO NOTHING RETURNING secret)
SELECT secret FROM made UNION ALL SELECT secret FROM api_cursor_key
"""


@translated(request_data=False)
async def cursor_key(pool: Pool, candidate: bytes) -> bytes:
    """The stored cursor-signing key; ``candidate`` becomes it if none is stored yet."""
    secret = await pool.fetchval(_CURSOR_KEY_SQL, candidate)
    if secret is None:
        # Another process inserted it after this statement's snapshot was taken: the next one sees it.
        secret = await pool.fetchval(_CURSOR_KEY_SQL, candidate)
    assert secret is not None  # noqa: S101 - the row exists once any process inserted it
    return bytes(secret)

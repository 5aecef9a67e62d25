"""Create, list and revoke API keys (the ``cityingest apikey`` command and the dev stack call these)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence

import asyncpg

from api import key_queries
from api.auth import check_scopes, hash_secret, new_key, parse_key
from api.storeerrors import translate
from core.errors import ConfigError, StoreUnavailable


@contextlib.asynccontextmanager
async def _connect(dsn: str) -> AsyncIterator[asyncpg.Connection]:
    """One connection; a database out of reach is a :class:`StoreUnavailable`, a refusal a ConfigError."""
    try:
        conn: asyncpg.Connection = await asyncpg.connect(dsn)
    except Exception as exc:
        ours = translate(exc, request_data=False)
        if ours is None:
            raise
        where = _where(dsn)
        if ours.retriable:
            raise StoreUnavailable(f"cannot reach the database at {where}: {exc}") from exc
        # Refused at connect time (credentials, database name, CONNECT privilege): the settings are wrong.
        raise ConfigError(f"the database at {where} refused the connection: {exc}") from exc
    try:
        yield conn
    finally:
        await asyncio.shield(conn.close())


def _where(dsn: str) -> str:
    # host:port/db of the DSN, never its password.
    rest = dsn.split("://", 1)[-1]
    return rest.rsplit("@", 1)[-1] or "the default socket"


async def create_api_key(dsn: str, name: str, scopes: Sequence[str]) -> str:
    """Store a new key named ``name`` with ``scopes`` and return its plaintext (shown once, never stored)."""
    if not name.strip():
        raise ValueError("an API key needs a name")
    checked = check_scopes(list(scopes))
    key = new_key()
    async with _connect(dsn) as conn:
        await key_queries.insert_api_key(conn, key.key_id, name, key.secret_sha256, checked)
    return key.plaintext


async def list_api_keys(dsn: str) -> list[key_queries.ApiKeyInfo]:
    """Every key, newest first (never a secret: only hashes are stored)."""
    async with _connect(dsn) as conn:
        return await key_queries.list_api_keys(conn)


async def revoke_api_key(dsn: str, key_id: str) -> bool:
    """Revoke the key ``key_id``; False if no such unrevoked key exists."""
    async with _connect(dsn) as conn:
        return await key_queries.revoke_api_key(conn, key_id)


async def key_has_scopes(dsn: str, plaintext: str, scopes: Sequence[str]) -> bool:
    """Whether ``plaintext`` is a stored, unrevoked key holding every one of ``scopes``."""
    parsed = parse_key(plaintext)
    if parsed is None:
        return False
    async with _connect(dsn) as conn:
        held = await key_queries.active_api_key(conn, parsed[0], hash_secret(parsed[1]))
    return held is not None and set(scopes) <= set(held)

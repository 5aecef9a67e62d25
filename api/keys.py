"""Create and revoke API keys (the ``cityingest apikey`` command and the dev stack call these)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import asyncpg

from api import queries
from api.auth import check_scopes, new_key


async def create_api_key(dsn: str, name: str, scopes: Sequence[str]) -> str:
    """Store a new key named ``name`` with ``scopes`` and return its plaintext (shown once, never stored)."""
    if not name.strip():
        raise ValueError("an API key needs a name")
    checked = check_scopes(list(scopes))
    key = new_key()
    conn = await asyncpg.connect(dsn)
    try:
        await queries.insert_api_key(conn, key.key_id, name, key.secret_sha256, checked)
    finally:
        await asyncio.shield(conn.close())
    return key.plaintext


async def revoke_api_key(dsn: str, key_id: str) -> bool:
    """Revoke the key ``key_id``; False if no such unrevoked key exists."""
    conn = await asyncpg.connect(dsn)
    try:
        return await queries.revoke_api_key(conn, key_id)
    finally:
        await asyncio.shield(conn.close())

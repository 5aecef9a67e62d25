"""The key that signs paging cursors: derived from ``CITYINGEST_CURSOR_SECRET``, or kept in the store.

Every replica of the API must sign with the same key, or a cursor issued by one is refused by
another. A configured secret gives every process the same key without the database; without one, the
first process that needs a key stores 32 random bytes in ``api_cursor_key`` (migration 0010) and every
process of the deployment reads them from there. Either way the key survives restarts.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets

from api import key_queries
from api.pagination import Cursors

_CONTEXT = b"cityingest paging cursors v1"


class CursorKey:
    """Loads the deployment's cursor key once per process and hands out :class:`Cursors` signed with it."""

    def __init__(self, secret: str | None) -> None:
        self._cursors: Cursors | None = None
        if secret:
            # Derived, so the configured secret itself never signs anything an attacker sees.
            self._cursors = Cursors(hmac.new(secret.encode(), _CONTEXT, hashlib.sha256).digest())
        self._lock = asyncio.Lock()

    async def cursors(self, pool: key_queries.Pool) -> Cursors:
        """The deployment's :class:`Cursors`; reads (or first creates) the stored key on first use."""
        if self._cursors is None:
            async with self._lock:
                if self._cursors is None:
                    key = await key_queries.cursor_key(pool, secrets.token_bytes(32))
                    self._cursors = Cursors(key)
        return self._cursors

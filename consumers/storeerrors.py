"""The consumer's store errors, translated once where they enter: callers branch on our classes only.

asyncpg raises many things when a connection is cut mid-query, mid-COPY or mid-transaction (a server
shutdown sends ``57P01`` and closes the socket; which of ``AdminShutdownError``,
``ConnectionDoesNotExistError``, ``InterfaceError``, ``InternalClientError`` or ``ConnectionResetError``
reaches the caller depends on which of the error and the end of the stream it reads first). Every one of
them means the store is unavailable, not that the consumer is broken:

- connection and resource errors (SQLSTATE classes 08, 53, 57, 58), a rolled-back transaction (40:
  serialization failure or deadlock, gone on retry), ``OSError``, timeouts, asyncpg's interface and
  internal client errors -> :class:`~core.errors.StoreUnavailable` (retriable);
- data errors (22, 23, 54) -> :class:`~core.errors.StoreRejectedData` (the same data fails again);
- anything else (42: an undefined table or function, a syntax error, a privilege missing; ...) is a bug
  of ours or of the schema: logged with its SQLSTATE and raised as it is, so the process stops and its
  supervisor restarts it rather than retrying it forever.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Iterator
from typing import Final

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from core.errors import StoreRejectedData, StoreUnavailable

log = logging.getLogger(__name__)

_UNAVAILABLE_CLASSES: Final = frozenset({"08", "40", "53", "57", "58"})
_DATA_CLASSES: Final = frozenset({"22", "23", "54"})
_CONFIGURATION_ERRORS: Final = (
    asyncpg.ClientConfigurationError,
    asyncpg.UnsupportedClientFeatureError,
    asyncpg.UnsupportedServerFeatureError,
)
"""Interface errors that no retry can cure: the consumer's configuration or the server is wrong."""


def _describe(exc: BaseException, sqlstate: str | None = None) -> str:
    code = f" (SQLSTATE {sqlstate})" if sqlstate else ""
    return f"{type(exc).__name__}{code}: {exc}"


def translate(exc: BaseException) -> StoreUnavailable | StoreRejectedData | None:
    """Our error for a driver error of the store; None when it is none we expect (a bug: let it raise)."""
    if isinstance(exc, asyncpg.PostgresError):
        sqlstate: str | None = getattr(exc, "sqlstate", None)
        cls = (sqlstate or "")[:2]
        if cls in _UNAVAILABLE_CLASSES:
            return StoreUnavailable(_describe(exc, sqlstate))
        if cls in _DATA_CLASSES:
            return StoreRejectedData(_describe(exc, sqlstate))
        return None
    if isinstance(exc, _CONFIGURATION_ERRORS):
        return None
    if isinstance(exc, OSError | TimeoutError | asyncpg.InterfaceError | asyncpg.InternalClientError):
        return StoreUnavailable(_describe(exc))
    return None


@contextlib.contextmanager
def store_errors() -> Iterator[None]:
    """Raise the driver errors of the block as :func:`translate` says; log any other SQLSTATE as a bug."""
    try:
        yield
    except Exception as exc:
        ours = translate(exc)
        if ours is not None:
            raise ours from exc
        if isinstance(exc, asyncpg.PostgresError):
            log.exception("the store raised SQLSTATE %s, which no retry can cure (a bug)", exc.sqlstate)
        raise


@contextlib.asynccontextmanager
async def store_connection(pool: asyncpg.Pool) -> AsyncIterator[PoolConnectionProxy]:
    """A connection of ``pool`` whose errors, from acquiring it to releasing it, are translated.

    Losing the connection also ends a wait asyncpg would never end by itself: a COPY that waits for the
    socket to drain (a large batch, a slow server) is not woken when the connection drops, and would hang
    the consumer for good. The block then ends as a timeout, which is translated like any lost connection.
    """
    with store_errors():
        async with pool.acquire() as conn, asyncio.timeout(None) as lost:
            loop = asyncio.get_running_loop()
            watching = True

            def on_terminated(_: object) -> None:
                # Called soon after the connection is gone, possibly once the block is over.
                if watching and lost.when() is None:
                    lost.reschedule(loop.time())

            conn.add_termination_listener(on_terminated)
            try:
                yield conn
            finally:
                watching = False
                # A lost connection is detached from its proxy already (and forgot its listeners).
                with contextlib.suppress(asyncpg.InterfaceError):
                    conn.remove_termination_listener(on_terminated)

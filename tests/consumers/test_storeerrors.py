"""The consumer's store errors are translated once, by class: unavailable (retried), rejected data
(dead-lettered), or a bug (raised as it is, logged with its SQLSTATE)."""

from __future__ import annotations

import asyncio
import logging
import os
import signal

import asyncpg
import pytest
from asyncpg import exceptions as pg

from consumers.storeerrors import store_connection, store_errors, translate
from core.errors import CityIngestError, StoreRejectedData, StoreUnavailable
from devstack.postgres import PostgresCluster
from tests.consumers.harness import eventually


def _server(sqlstate: str, message: str = "from the server") -> asyncpg.PostgresError:
    """The exception asyncpg makes of a server's ErrorResponse with this SQLSTATE."""
    exc = asyncpg.PostgresError.new({"C": sqlstate, "M": message, "S": "ERROR"})
    assert isinstance(exc, asyncpg.PostgresError)
    assert exc.sqlstate == sqlstate
    return exc


UNAVAILABLE: list[BaseException] = [
    pg.InternalClientError("cannot switch to state 15; another operation (2) is in progress"),
    pg.ProtocolError("unexpected message"),
    pg.ConnectionDoesNotExistError("connection was closed in the middle of operation"),
    asyncpg.InterfaceError("cannot call Transaction.__aexit__(): the underlying connection is closed"),
    ConnectionResetError(104, "Connection reset by peer"),
    ConnectionRefusedError(111, "Connect call failed"),
    OSError("Network is unreachable"),
    TimeoutError(),
    _server("57P01", "terminating connection due to administrator command"),
    _server("57P02", "terminating connection because of crash of another server process"),
    _server("57P03", "the database system is shutting down"),
    _server("57014", "canceling statement due to user request"),
    _server("08006", "connection failure"),
    _server("08001", "could not connect"),
    _server("53300", "sorry, too many clients already"),
    _server("53100", "could not extend file: No space left on device"),
    _server("58030", "could not write to file"),
    _server("40P01", "deadlock detected"),
    _server("40001", "could not serialize access"),
]
REJECTED: list[BaseException] = [
    _server("22P02", "invalid input syntax for type integer"),
    _server("22003", "value out of range"),
    _server("23505", "duplicate key value violates unique constraint"),
    _server("23514", "new row violates check constraint"),
    _server("54000", "index row size exceeds maximum"),
]
BUGS: list[BaseException] = [
    _server("42P01", 'relation "readings" does not exist'),
    _server("42501", "permission denied for table readings"),
    _server("42601", "syntax error"),
    _server("XX000", "internal error"),
    _server("25P02", "current transaction is aborted"),
    asyncpg.ClientConfigurationError("bad DSN"),
    ValueError("a bug of ours"),
    RuntimeError("a bug of ours"),
]


@pytest.mark.parametrize(
    ("sqlstate", "driver_class"),
    [
        ("57P01", pg.AdminShutdownError),
        ("57P03", pg.CannotConnectNowError),
        ("08006", pg.ConnectionFailureError),
        ("08003", pg.ConnectionDoesNotExistError),
        ("53300", pg.TooManyConnectionsError),
        ("22P02", pg.InvalidTextRepresentationError),
        ("23505", pg.UniqueViolationError),
        ("42P01", pg.UndefinedTableError),
    ],
)
def test_the_server_errors_above_are_the_drivers_own_classes(
    sqlstate: str, driver_class: type[asyncpg.PostgresError]
) -> None:
    assert type(_server(sqlstate)) is driver_class


@pytest.mark.parametrize("exc", UNAVAILABLE, ids=lambda e: f"{type(e).__name__}")
def test_connection_and_resource_errors_mean_the_store_is_unavailable(exc: BaseException) -> None:
    ours = translate(exc)
    assert isinstance(ours, StoreUnavailable)
    assert ours.retriable
    assert type(exc).__name__ in str(ours)


@pytest.mark.parametrize("exc", REJECTED, ids=lambda e: f"{type(e).__name__}")
def test_data_errors_mean_the_store_rejected_the_data(exc: BaseException) -> None:
    ours = translate(exc)
    assert isinstance(ours, StoreRejectedData)
    assert not ours.retriable
    assert f"SQLSTATE {getattr(exc, 'sqlstate', '')}" in str(ours)


@pytest.mark.parametrize("exc", BUGS, ids=lambda e: f"{type(e).__name__}")
def test_anything_else_is_a_bug_and_raised_as_it_is(
    exc: BaseException, caplog: pytest.LogCaptureFixture
) -> None:
    assert translate(exc) is None
    with caplog.at_level(logging.ERROR), pytest.raises(type(exc)) as raised, store_errors():
        raise exc
    assert raised.value is exc
    if isinstance(exc, asyncpg.PostgresError):
        assert f"SQLSTATE {exc.sqlstate}" in caplog.text


def test_store_errors_raise_our_class_chained_to_the_driver_error() -> None:
    exc = UNAVAILABLE[0]
    with pytest.raises(StoreUnavailable) as raised, store_errors():
        raise exc
    assert raised.value.__cause__ is exc
    ours = StoreRejectedData("already ours")
    with pytest.raises(StoreRejectedData) as again, store_errors():
        raise ours
    assert again.value is ours
    assert isinstance(ours, CityIngestError)


async def _query_cut_by_the_server(pool: asyncpg.Pool, dsn: str) -> None:
    """Run a query in a transaction and have the server terminate its connection meanwhile."""
    async with store_connection(pool) as conn, conn.transaction():
        pid = await conn.fetchval("SELECT pg_backend_pid()")
        sleeping = asyncio.ensure_future(conn.execute("SELECT pg_sleep(30)"))
        try:
            other = await asyncpg.connect(dsn)
            try:
                await asyncio.sleep(0.2)
                await other.execute("SELECT pg_terminate_backend($1)", pid)
            finally:
                await other.close()
            await sleeping
        finally:
            # The block may end first (the lost connection ends it): the query's error is still read.
            await asyncio.gather(sleeping, return_exceptions=True)


@pytest.mark.integration
async def test_real_store_errors_through_a_pool_connection(database_url: str) -> None:
    """A rejected value, a missing table and a connection cut mid-query, from a real server."""
    pool = await asyncpg.create_pool(database_url, min_size=0, max_size=2)
    try:
        with pytest.raises(StoreRejectedData, match="22P02"):
            async with store_connection(pool) as conn:
                await conn.fetchval("SELECT $1::text::int", "x")
        with pytest.raises(asyncpg.UndefinedTableError):
            async with store_connection(pool) as conn:
                await conn.fetchval("SELECT count(*) FROM no_such_table")
        with pytest.raises(StoreUnavailable):
            await _query_cut_by_the_server(pool, database_url)
        # The pool replaces the lost connection.
        async with store_connection(pool) as conn:
            assert await conn.fetchval("SELECT 1") == 1
    finally:
        await pool.close()


async def _copy_while_the_server_dies(pool: asyncpg.Pool) -> None:
    """A COPY (as a batch is staged) that fills the socket while its server process is stopped; the
    process is then killed."""
    async with store_connection(pool) as conn:
        await conn.execute("CREATE TEMP TABLE big (a text, b int8, c float8)")
        # Once, so that the COPY below sends rows at once (the table's description is cached).
        await conn.copy_records_to_table("big", records=[("x", 0, 0.0)], schema_name="pg_temp")
        backend = await conn.fetchval("SELECT pg_backend_pid()")

        async def waits_to_write() -> bool:
            # asyncpg's flow control: cleared while the socket's buffers are full.
            return not conn._protocol.writing_allowed.is_set()  # type: ignore[attr-defined]

        async def kill_once_the_copy_waits() -> None:
            try:
                await eventually(waits_to_write, 30, every_s=0.05)
            finally:
                os.kill(backend, signal.SIGKILL)

        os.kill(backend, signal.SIGSTOP)
        killer = asyncio.ensure_future(kill_once_the_copy_waits())
        try:
            rows = (("x" * 50, i, 0.5) for i in range(5_000_000))
            await conn.copy_records_to_table("big", records=rows, schema_name="pg_temp")
        finally:
            await asyncio.gather(killer, return_exceptions=True)


@pytest.mark.integration
@pytest.mark.timeout(180)
async def test_a_copy_cut_off_by_the_server_ends_as_store_unavailable(own_cluster: PostgresCluster) -> None:
    """asyncpg never wakes a COPY waiting for the socket to drain when its connection is lost."""
    pool = await asyncpg.create_pool(own_cluster.dsn(), min_size=0, max_size=1)
    try:
        # The guard: a hang (the old behaviour) fails as a TimeoutError instead of StoreUnavailable.
        with pytest.raises(StoreUnavailable):
            async with asyncio.timeout(60):
                await _copy_while_the_server_dies(pool)
    finally:
        pool.terminate()

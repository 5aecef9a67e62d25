"""Store errors at the API boundary: an outage is a 503, a bug a 500 that names no internals.

On the real PostgreSQL fixture: the database out of reach, the API's backend terminated mid-query, and a
rollup table dropped from the test's own database (a programming error, SQLSTATE 42P01).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from types import ModuleType

import asyncpg
import httpx
import pytest

from api import key_queries, queries, report_queries
from api.app import create_app
from api.ops import queries as ops_queries
from api.settings import ApiSettings
from api.storeerrors import RequestDataRejected, StoreBug, translate
from core.errors import ConfigError, StoreRejectedData, StoreUnavailable
from devstack.process import free_port
from tests.api.conftest import register, started

_INTERNALS = ("readings_hourly", "42P01", "UndefinedTable", "relation", "asyncpg", "SELECT", "Traceback")


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (asyncpg.exceptions.ConnectionFailureError("gone"), StoreUnavailable),  # 08006
        (asyncpg.exceptions.TooManyConnectionsError("full"), StoreUnavailable),  # 53300
        (asyncpg.exceptions.AdminShutdownError("terminated"), StoreUnavailable),  # 57P01
        (asyncpg.exceptions.PostgresIOError("disk"), StoreUnavailable),  # 58030
        (ConnectionRefusedError("refused"), StoreUnavailable),
        (TimeoutError(), StoreUnavailable),
        (asyncpg.exceptions.ConnectionDoesNotExistError("closed"), StoreUnavailable),
        (asyncpg.InterfaceError("pool is closed"), StoreUnavailable),
        (asyncpg.InternalClientError("protocol"), StoreUnavailable),
        (asyncpg.exceptions.InvalidPasswordError("password"), ConfigError),  # 28P01
        (asyncpg.exceptions.InvalidCatalogNameError("no such database"), ConfigError),  # 3D000
        (asyncpg.exceptions.CharacterNotInRepertoireError("nul"), RequestDataRejected),  # 22021
        (asyncpg.exceptions.CheckViolationError("check"), RequestDataRejected),  # 23514
        (asyncpg.exceptions.ProgramLimitExceededError("too big"), RequestDataRejected),  # 54000
        (asyncpg.exceptions.UndefinedTableError("no table"), StoreBug),  # 42P01
        (asyncpg.exceptions.PostgresSyntaxError("syntax"), StoreBug),  # 42601
        (asyncpg.exceptions.InsufficientPrivilegeError("denied"), StoreBug),  # 42501
        (asyncpg.exceptions.DataError("22000"), RequestDataRejected),
        (asyncpg.exceptions._base.DataError("invalid input for query argument $1"), StoreBug),
    ],
)
def test_driver_errors_translate_by_class(error: Exception, expected: type[Exception]) -> None:
    ours = translate(error, request_data=True)
    assert type(ours) is expected
    assert ours.retriable is (expected is StoreUnavailable)


def test_refused_data_is_the_clients_only_when_the_request_carried_it() -> None:
    ours = translate(asyncpg.exceptions.UniqueViolationError("dup"), request_data=False)
    assert type(ours) is StoreRejectedData
    assert "23505" in str(ours)
    assert translate(ValueError("not the store's"), request_data=True) is None
    assert translate(StoreUnavailable("already ours"), request_data=True) is None


@pytest.mark.parametrize("module", [queries, key_queries, report_queries, ops_queries])
def test_every_query_function_translates_driver_errors(module: ModuleType) -> None:
    """A query added without :func:`api.storeerrors.translated` would let driver errors reach the routes."""
    public = [
        f
        for name, f in vars(module).items()
        if inspect.iscoroutinefunction(f) and not name.startswith("_") and f.__module__ == module.__name__
    ]
    assert public
    assert [f.__name__ for f in public if not hasattr(f, "__wrapped__")] == []


def _assert_store_down(resp: httpx.Response) -> None:
    assert resp.status_code == 503, resp.text
    assert resp.headers["content-type"] == "application/problem+json"
    assert int(resp.headers["retry-after"]) > 0


async def test_an_unreachable_database_is_a_503_everywhere(
    api_settings: ApiSettings, auth: dict[str, str]
) -> None:
    closed = api_settings.model_copy(
        update={"database_url": f"postgresql://nobody@127.0.0.1:{free_port()}/nothing"}
    )
    async for client in started(create_app(closed)):
        _assert_store_down(await client.get("/v1/devices", headers=auth))
        _assert_store_down(await client.get("/readyz"))
        # A body on a keyed route has its key checked by the body guard, before the route runs.
        _assert_store_down(await client.put("/v1/devices/d1", headers=auth, json={"domain": "power"}))
        assert (await client.get("/healthz")).status_code == 200


async def test_a_database_url_naming_no_database_makes_the_api_unready(
    api_settings: ApiSettings, auth: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    dsn = api_settings.database_url.rsplit("/", 1)[0] + "/no_such_database"
    async for client in started(create_app(api_settings.model_copy(update={"database_url": dsn}))):
        ready = await client.get("/readyz")
        assert ready.status_code == 503, ready.text
        assert "CITYINGEST_DATABASE_URL" in ready.json()["detail"]
        caplog.set_level(logging.ERROR)
        listing = await client.get("/v1/devices", headers=auth)
        assert listing.status_code == 500, listing.text
        assert "no_such_database" not in listing.text
        assert any("3D000" in r.getMessage() for r in caplog.records)


async def test_a_backend_terminated_mid_query_is_a_503_not_a_500(
    client: httpx.AsyncClient, auth: dict[str, str], database_url: str
) -> None:
    await register(client, auth, "d1", domain="power")
    admin = await asyncpg.connect(database_url)
    try:
        async with admin.transaction():
            # The listing waits on this lock, so its backend is inside a statement when it is terminated.
            await admin.execute("LOCK TABLE devices IN ACCESS EXCLUSIVE MODE")
            listing = asyncio.create_task(client.get("/v1/devices", headers=auth))
            pid = None
            while pid is None:
                await asyncio.sleep(0.05)
                pid = await admin.fetchval(
                    "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                    "AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()"
                )
            assert await admin.fetchval("SELECT pg_terminate_backend($1)", pid)
            resp = await listing
        _assert_store_down(resp)
        assert resp.json()["title"] == "Store unavailable"
    finally:
        await admin.close()
    # The pool replaces the lost connection: the next request is served.
    assert (await client.get("/readyz")).status_code == 200
    assert (await client.get("/v1/devices", headers=auth)).status_code == 200


async def test_a_dropped_rollup_table_is_a_logged_500_not_an_outage(
    client: httpx.AsyncClient, auth: dict[str, str], database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    await register(client, auth, "d1", domain="power")
    admin = await asyncpg.connect(database_url)
    try:
        await admin.execute("DROP TABLE readings_hourly CASCADE")
    finally:
        await admin.close()
    caplog.set_level(logging.WARNING)
    params = {
        "device_id": "d1",
        "metric": "energy_import_kwh",
        "bucket": "1h",
        "start": "2024-01-01T00:00:00Z",
        "end": "2024-02-01T00:00:00Z",
    }
    resp = await client.get("/v1/series", params=params, headers=auth)
    assert resp.status_code == 500, resp.text
    assert resp.headers["content-type"] == "application/problem+json"
    assert "retry-after" not in resp.headers
    assert resp.json()["title"] == "Internal error"
    for word in _INTERNALS:
        assert word not in resp.text
    errors = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(errors) == 1, [r.getMessage() for r in errors]
    assert errors[0].levelno == logging.ERROR
    assert "42P01" in errors[0].getMessage()
    assert "unavailable" not in errors[0].getMessage()
    # The database answers: the API stays ready, and what does not need the table still works.
    assert (await client.get("/readyz")).status_code == 200
    assert (await client.get("/v1/devices/d1", headers=auth)).status_code == 200


async def test_a_missing_offsets_table_fails_the_overview_instead_of_reporting_the_store_down(
    client: httpx.AsyncClient, auth: dict[str, str], database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    admin = await asyncpg.connect(database_url)
    try:
        await admin.execute("DROP TABLE consumer_offsets CASCADE")
    finally:
        await admin.close()
    caplog.set_level(logging.ERROR)
    for path in ("/v1/ops/overview", "/v1/ops/lag"):
        resp = await client.get(path, headers=auth)
        assert resp.status_code == 500, (path, resp.text)
        assert "consumer_offsets" not in resp.text
        assert "did not answer" not in resp.text
    assert sum("42P01" in r.getMessage() for r in caplog.records) == 2

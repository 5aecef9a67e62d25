"""The FastAPI application: one lifespan owns the database pool; ``serve`` runs it under uvicorn."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from typing import Any

import asyncpg
import uvicorn
from fastapi import FastAPI

from api.broker_accounts import BrokerAccounts, reconcile_forever
from api.cursor_key import CursorKey
from api.device_certs import DeviceCa
from api.device_secrets import DerivationKey
from api.guard import BodyGuard
from api.metrics import ApiMetrics, MetricsMiddleware, StatisticsCacheCollector
from api.openapi_links import add_links
from api.problems import install_problem_handlers
from api.routes import (
    aggregates,
    coverage,
    credentials,
    devices,
    health,
    ops,
    ops_dashboard,
    releases,
    sdmx,
    series,
    statistics,
)
from api.sdmx.bodies import ReleaseBodies
from api.sdmx.store import StructureStore
from api.sdmx.structures import Names
from api.settings import ApiSettings
from api.statistics_cache import StatisticsCache
from core.catalogue import load_catalogue
from core.dynsec import Dynsec
from core.errors import ConfigError


def create_app(settings: ApiSettings) -> FastAPI:
    """The API application for ``settings``; the pool opens lazily, so it starts while the DB is down."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        pool = await asyncpg.create_pool(
            settings.database_url,
            min_size=0,
            max_size=settings.db_pool_size,
            # Month arithmetic in SQL (interval '1 month') must happen in UTC, whatever the server says.
            server_settings={"timezone": "UTC"},
        )
        app.state.pool = pool
        try:
            async with broker_accounts(app, settings, pool):
                yield
        finally:
            await asyncio.shield(pool.close())

    app = FastAPI(
        title="cityingest",
        summary="Smart-city sensor data: metrics for city systems, statistics for NSOs, "
        "health for operators.",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.catalogue = load_catalogue(settings.catalogue_file)
    app.state.metrics = ApiMetrics()
    app.state.statistics_cache = StatisticsCache(settings.statistics_cache_rows)
    app.state.sdmx_structures = StructureStore(
        Names(settings.sdmx_agency, settings.sdmx_dataflow, settings.sdmx_dataflow_name),
        app.state.catalogue,
        settings.domains,
    )
    app.state.sdmx_release_bodies = ReleaseBodies(settings.sdmx_cache_bytes)
    secret = settings.cursor_secret.get_secret_value() if settings.cursor_secret else None
    app.state.cursor_key = CursorKey(secret)
    app.state.accounts = None
    app.state.device_ca = (
        DeviceCa.load(settings.device_ca_cert_file, settings.device_ca_key_file)
        if settings.device_ca_cert_file and settings.device_ca_key_file
        else None
    )
    app.state.metrics.registry.register(StatisticsCacheCollector(app.state.statistics_cache))
    _install_openapi_links(app)
    install_problem_handlers(app)
    for module in (
        health,
        devices,
        credentials,
        series,
        aggregates,
        statistics,
        releases,
        coverage,
        ops,
        ops_dashboard,
        sdmx,
    ):
        app.include_router(module.router)
    # Added first, so it runs inside the metrics middleware: refused requests are counted too.
    app.add_middleware(BodyGuard, api=app, max_body_bytes=settings.max_body_bytes)
    app.add_middleware(MetricsMiddleware, metrics=app.state.metrics)
    return app


@contextlib.asynccontextmanager
async def broker_accounts(app: FastAPI, settings: ApiSettings, pool: asyncpg.Pool) -> AsyncIterator[None]:
    """With dynamic security on: the admin connection to the broker and the reconciler, for the app's life.

    The connection is made in the background: the API starts (and serves everything else) while the
    broker is away; the credentials routes answer 503 until it is back.
    """
    if not settings.dynsec_enabled or settings.dynsec_password is None:
        yield
        return
    admin_password = settings.dynsec_password.get_secret_value()
    credential_key = settings.device_credential_key
    key = DerivationKey.from_settings(
        credential_key.get_secret_value() if credential_key else None, admin_password
    )
    metrics: ApiMetrics = app.state.metrics
    dynsec = Dynsec(settings, settings.dynsec_username, admin_password)
    accounts = BrokerAccounts(
        dynsec, key, settings.mqtt_topic_prefix, lambda action: metrics.dynsec_fixes.labels(action).inc()
    )
    await dynsec.start()
    metrics.watch_dynsec(dynsec)
    app.state.accounts = accounts
    task = asyncio.create_task(
        reconcile_forever(
            accounts,
            pool,
            settings.dynsec_reconcile_s,
            lambda outcome: metrics.dynsec_reconciles.labels(outcome).inc(),
        ),
        name="dynsec-reconciler",
    )
    try:
        yield
    finally:
        app.state.accounts = None
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await asyncio.shield(dynsec.stop())


def _install_openapi_links(app: FastAPI) -> None:
    """The generated OpenAPI document, plus the links between operations (api.openapi_links); with
    ``CITYINGEST_SDMX_PUBLIC`` the ``/sdmx`` operations state that they need no key."""
    generate = app.openapi
    public = app.state.settings.sdmx_public

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = add_links(generate())
            if public:
                for path, operations in document["paths"].items():
                    if path.startswith("/sdmx/"):
                        for operation in operations.values():
                            operation["security"] = []
            app.openapi_schema = document
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: the ``cityingest`` CLI owns SIGINT/SIGTERM."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


async def serve(settings: ApiSettings) -> None:
    """Serve the API until cancelled, then finish in-flight requests and close the pool."""
    config = uvicorn.Config(
        create_app(settings),
        host=settings.api_host,
        port=settings.api_port,
        log_config=None,
        access_log=False,
        lifespan="on",
    )
    server = _Server(config)
    task = asyncio.create_task(server.serve())
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        server.should_exit = True
        await task
        raise
    except SystemExit:
        # uvicorn exits the process when it cannot bind; say why instead.
        raise ConfigError(f"the API cannot listen on {settings.api_host}:{settings.api_port}") from None

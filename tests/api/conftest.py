"""Fixtures of the API tests: an app on a fresh migrated store, keys, and the consumer's write path."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator, Sequence
from datetime import UTC, datetime, timedelta

import asyncpg
import httpx
import pytest
from fastapi import FastAPI

from api.app import create_app
from api.auth import Scope
from api.keys import create_api_key
from api.settings import ApiSettings
from consumers.batch import prepare
from consumers.sink import apply_batch
from core.catalogue import load_catalogue
from core.readings import Envelope, Reading, encode_envelope, to_us
from devstack.process import free_port
from tests.consumers.streams import Record

ALL_SCOPES = [s.value for s in Scope]
COUNTERS = sorted(load_catalogue().counters())


@pytest.fixture
def api_settings(database_url: str) -> ApiSettings:
    """Settings on this test's store; Kafka at a closed port unless a test says otherwise."""
    return ApiSettings(database_url=database_url, kafka_bootstrap="127.0.0.1:9", kafka_timeout_s=1.0)


async def started(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client on ``app`` with its lifespan running."""
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
            yield client


@pytest.fixture
def server(database_url: str) -> Iterator[str]:
    """``cityingest api`` on this test's store; Kafka at a closed port (lag answers without it)."""
    port = free_port()
    env = dict(
        os.environ,
        CITYINGEST_DATABASE_URL=database_url,
        CITYINGEST_API_PORT=str(port),
        CITYINGEST_KAFKA_BOOTSTRAP="127.0.0.1:9",
        CITYINGEST_KAFKA_TIMEOUT_S="0.5",
        CITYINGEST_LOG_LEVEL="WARNING",
    )
    proc = subprocess.Popen([sys.executable, "-m", "cli", "api"], env=env)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(20)


async def wait_healthy(base: str) -> None:
    """Wait until the server answers /healthz."""
    async with httpx.AsyncClient(base_url=base) as client:
        for _ in range(200):
            try:
                await client.get("/healthz")
            except httpx.TransportError:
                await asyncio.sleep(0.1)
            else:
                return


@pytest.fixture
async def client(api_settings: ApiSettings) -> AsyncIterator[httpx.AsyncClient]:
    """A client of the API on this test's store."""
    async for c in started(create_app(api_settings)):
        yield c


@pytest.fixture
async def key(database_url: str) -> str:
    """A key with every scope."""
    return await create_api_key(database_url, "test", ALL_SCOPES)


@pytest.fixture
def auth(key: str) -> dict[str, str]:
    """Headers carrying the all-scope key."""
    return {"Authorization": f"Bearer {key}"}


def envelope(device: str, domain: str, readings: Sequence[tuple[str, datetime, float, int]]) -> Envelope:
    """An envelope of ``device`` with readings ``(metric, time, value, flags)``."""
    rs = tuple(Reading(m, to_us(ts), v, f) for m, ts, v, f in readings)
    received = max(r.ts_us for r in rs)
    return Envelope(device, domain, "bridge-test", received, rs)


def burst(device: str, n: int) -> list[Envelope]:
    """``n`` one-reading envelopes of ``device`` (one key, so one partition), for batched produces."""
    first = datetime(2026, 1, 1, tzinfo=UTC)
    return [envelope(device, "water", [("water_flow", first + timedelta(seconds=i), i, 0)]) for i in range(n)]


async def apply(
    dsn: str, envelopes: Sequence[Envelope], *, topic: str = "readings", partition: int = 0, first: int = 0
) -> int:
    """Apply ``envelopes`` as Kafka records through the consumer's own batch transaction."""
    records = [
        Record(topic, partition, first + i, e.device_id.encode(), encode_envelope(e))
        for i, e in enumerate(envelopes)
    ]
    batch = prepare(records, component_id="api-test", now_us=0)
    conn = await asyncpg.connect(dsn)
    try:
        applied = await apply_batch(conn, batch, counters=COUNTERS, group_id="g-test", consumer_id="api-test")
    finally:
        await conn.close()
    return applied.inserted


async def register(
    client: httpx.AsyncClient, auth: dict[str, str], device: str, **body: object
) -> dict[str, object]:
    """PUT a device and return the stored device."""
    resp = await client.put(f"/v1/devices/{device}", json=body, headers=auth)
    assert resp.status_code in (200, 201), resp.text
    out: dict[str, object] = resp.json()
    return out

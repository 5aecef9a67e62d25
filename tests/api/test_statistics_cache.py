"""Closed months of the monthly statistics served from memory: never a figure a fresh query would not give.

Every check compares the caching API with one that never caches (``statistics_cache_rows=0``) on the
same store, after each kind of change that must invalidate a kept month: a late reading, a counter
increase corrected by a late reading in the month before, a device re-described, registered or
deleted. Expected figures are also computed here where the change makes them obvious.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import pytest

from api.app import create_app
from api.settings import ApiSettings
from api.statistics_cache import StatisticsCache
from tests.api.conftest import apply, envelope, register, started

pytestmark = pytest.mark.integration

METRIC = "water_volume_m3"
JAN = datetime(2024, 1, 1, tzinfo=UTC)
BREAKDOWNS = (None, "district", "district,provenance", "domain,provenance")


def test_cache_serves_only_matching_tags_and_stays_bounded() -> None:
    cache = StatisticsCache(max_rows=10)
    cache.put("k", JAN, (1, 1), ["a", "b"])
    assert cache.get("k", JAN, (1, 1)) == ["a", "b"]
    assert cache.get("k", JAN, (2, 1)) is None  # the month changed
    assert cache.get("k", JAN, (1, 2)) is None  # the registry changed
    assert cache.get("other", JAN, (1, 1)) is None
    for i in range(1, 6):
        cache.put("k", JAN + timedelta(days=31 * i), (1, 1), ["x"])  # 2 rows each, counted with the key
    assert cache.get("k", JAN, (1, 1)) is None  # least recently used, evicted
    assert len(cache) == 5
    cache.put("big", JAN, (1, 1), ["r"] * 10)  # larger than the whole cache: not kept
    assert cache.get("big", JAN, (1, 1)) is None
    disabled = StatisticsCache(max_rows=0)
    disabled.put("k", JAN, (1, 1), [])
    assert not disabled.enabled
    assert disabled.get("k", JAN, (1, 1)) is None


@pytest.fixture
def api_settings(database_url: str) -> ApiSettings:
    """No suppression (k = 1): the readings counts of one-device cells are what shows the cache moving."""
    return ApiSettings(
        database_url=database_url, kafka_bootstrap="127.0.0.1:9", kafka_timeout_s=1.0, suppression_k=1
    )


@pytest.fixture
async def uncached(api_settings: ApiSettings) -> AsyncIterator[httpx.AsyncClient]:
    """The API on the same store with the cache disabled: the reference."""
    settings = api_settings.model_copy(update={"statistics_cache_rows": 0})
    async for c in started(create_app(settings)):
        yield c


def meter(device: str, start: datetime, step: timedelta, n: int, value: float = 10.0) -> list[Any]:
    out = []
    for i in range(n):
        value += 1.0 + i % 2
        out.append(envelope(device, "water", [(METRIC, start + i * step, value, 0)]))
    return out


async def monthly(
    client: httpx.AsyncClient, auth: dict[str, str], by: str | None, **extra: str
) -> httpx.Response:
    params = {"metric": METRIC, "start": "2024-01", "end": "2024-04", **extra}
    if by:
        params["by"] = by
    resp = await client.get("/v1/statistics/monthly", params=params, headers=auth)
    assert resp.status_code == 200, resp.text
    return resp


async def statistics(client: httpx.AsyncClient, auth: dict[str, str], by: str | None) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = (await monthly(client, auth, by)).json()["items"]
    return items


async def same_everywhere(
    client: httpx.AsyncClient, uncached: httpx.AsyncClient, auth: dict[str, str]
) -> dict[tuple[str, str | None], dict[str, Any]]:
    """Every breakdown, asked twice of the caching API, equals the reference; returns by district."""
    for by in BREAKDOWNS:
        reference = await statistics(uncached, auth, by)
        assert await statistics(client, auth, by) == reference, by
        assert await statistics(client, auth, by) == reference, by  # now from the cache
        csv_ref = await monthly(uncached, auth, by, format="csv")
        assert (await monthly(client, auth, by, format="csv")).text == csv_ref.text, by
    return {(c["period"], c["district"]): c for c in await statistics(client, auth, "district")}


async def month_versions(conn: asyncpg.Connection) -> dict[datetime, int]:
    rows = await conn.fetch("SELECT month, sum(version) AS v FROM rollup_versions GROUP BY month")
    return {r["month"]: int(r["v"]) for r in rows}


def cache_of(client: httpx.AsyncClient) -> StatisticsCache:
    transport = client._transport
    assert isinstance(transport, httpx.ASGITransport)
    cache: StatisticsCache = transport.app.state.statistics_cache  # type: ignore[attr-defined]
    return cache


async def test_kept_months_follow_every_change(
    database_url: str, client: httpx.AsyncClient, uncached: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    for d in ("n1", "n2", "n3"):
        await register(
            client, auth, d, domain="water", district="north", provenance="official",
            expected_interval_s=21600, registered_at="2023-12-01T00:00:00Z",
        )  # fmt: skip
    await register(client, auth, "s1", domain="water", district="south", provenance="citizen")
    stream = []
    for d in ("n1", "n2", "n3", "s1"):
        stream += meter(d, JAN, timedelta(hours=6), 4 * 31)  # January only
        stream += meter(d, datetime(2024, 3, 1, tzinfo=UTC), timedelta(hours=6), 4 * 10, value=500.0)
    await apply(database_url, stream)

    cells = await same_everywhere(client, uncached, auth)
    cache = cache_of(client)
    assert cache.hits > 0
    assert len(cache) > 0
    scraped = (await client.get("/metrics", headers=auth)).text
    assert f"cityingest_api_statistics_cache_hits_total {float(cache.hits)}" in scraped
    assert f"cityingest_api_statistics_cache_rows {float(cache.rows)}" in scraped
    assert cells[("2024-01", "north")]["readings"] == 3 * 124
    march = cells[("2024-03", "north")]["total_consumption"]

    # A late reading in February (closed): February's cells change, and the March reading that
    # follows it now increases from it, not from January's last one.
    late = envelope("n1", "water", [(METRIC, datetime(2024, 2, 15, tzinfo=UTC), 400.0, 0)])
    assert await apply(database_url, [late], partition=1, first=10_000) == 1
    cells = await same_everywhere(client, uncached, auth)
    assert cells[("2024-02", "north")]["readings"] == 1
    assert cells[("2024-03", "north")]["total_consumption"] != march
    # Another one through the same partition: the month's counter row moves on, not only appears.
    later = envelope("n2", "water", [(METRIC, datetime(2024, 2, 20, tzinfo=UTC), 450.0, 0)])
    assert await apply(database_url, [later], partition=1, first=10_001) == 1
    cells = await same_everywhere(client, uncached, auth)
    assert cells[("2024-02", "north")]["readings"] == 2

    # A device moved to another district, then one registered with an interval, then one deleted.
    await register(client, auth, "n3", domain="water", district="south", provenance="official",
                   expected_interval_s=21600, registered_at="2023-12-01T00:00:00Z")  # fmt: skip
    cells = await same_everywhere(client, uncached, auth)
    assert cells[("2024-01", "north")]["readings"] == 2 * 124
    assert cells[("2024-01", "south")]["readings"] == 2 * 124
    await register(client, auth, "e1", domain="water", district="east", expected_interval_s=86400,
                   registered_at="2023-06-01T00:00:00Z")  # fmt: skip
    cells = await same_everywhere(client, uncached, auth)
    assert cells[("2024-02", "east")]["readings_expected"] == 29
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute("DELETE FROM devices WHERE device_id = 'e1'")
    finally:
        await conn.close()
    cells = await same_everywhere(client, uncached, auth)
    assert ("2024-02", "east") not in cells


async def test_a_device_seen_first_by_the_consumer_changes_nothing_kept_needlessly(
    database_url: str, client: httpx.AsyncClient, uncached: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    """Auto-registration by the consumer leaves the registry version alone; the readings' month moves."""
    await apply(database_url, meter("n1", JAN, timedelta(hours=6), 40))
    await same_everywhere(client, uncached, auth)
    conn = await asyncpg.connect(database_url)
    try:
        before = await conn.fetchval("SELECT version FROM device_registry_version")
        versions = await month_versions(conn)
        await apply(
            database_url, meter("x9", datetime(2024, 2, 3, tzinfo=UTC), timedelta(hours=1), 5), first=500
        )
        assert await conn.fetchval("SELECT version FROM device_registry_version") == before
        after = await month_versions(conn)
    finally:
        await conn.close()
    feb = datetime(2024, 2, 1, tzinfo=UTC)
    assert after[feb] > versions.get(feb, 0)
    assert after[JAN] == versions[JAN]
    cells = await same_everywhere(client, uncached, auth)
    assert cells[("2024-02", None)]["readings"] == 5

"""API latency: p50/p95 of /v1/statistics/monthly (a year by district) and /v1/series (1h, 30 days).

The store: 10,000 devices x 5 metrics x 12 months of monthly rollups, and hourly rollups of the same
metrics for ``--hourly-devices`` devices (all 10,000 would be 438M rows; a series query reads one
device's rows through the primary key, so its latency does not depend on how many other devices exist).
Rows are generated in SQL straight into the rollup tables, then vacuumed as autovacuum would leave
them: this measures reads of a settled store, not the consumer.

    .venv/bin/python -m bench.api [--database-url URL] [--devices 10000] [--hourly-devices 50] [--runs 200]

Run it as a module (as a script, ``bench/api.py`` would shadow the ``api`` package). Without
``--database-url`` a private PostgreSQL cluster is started in a temporary directory.

SDMX (issue 15): the twelve months are published as release 1 (its time is printed), then SDMX data
for a year by district from that release (SDMX-ML generic, and SDMX-CSV) and the dataflow with
``references=all`` (SDMX-ML structure) are measured the same way: by default (a release's rendered
messages are kept in memory, as they never change) and with that memory off (rendered by pysdmx on
every request); the release's data is checked to be the same bytes on every request, either way.

The statistics endpoint is measured without the cache of closed months, with it (the default), and
over the rolling year up to the current month. Besides the latencies it prints the statistics query's
latency alone (the rest of a request is the application), the server CPU that query takes on a serial
plan (private cluster only: a figure that other jobs on a shared machine barely move, for comparing
changes) and the load average.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from api import report_queries
from api.app import create_app
from api.auth import Scope
from api.keys import create_api_key
from api.settings import ApiSettings
from api.statistics import month_range
from bench.ingest import cpu_seconds
from devstack.postgres import PostgresCluster
from devstack.process import free_port
from migrations import apply_migrations

METRICS = ["temperature", "humidity", "co2", "energy_import_kwh", "occupancy"]
FILL_SQL = """
INSERT INTO devices (device_id, domain, district, provenance, status, expected_interval_s, registered_at)
SELECT 'dev-' || i, 'building', 'district-' || (i % 25), (ARRAY['official','partner','citizen'])[1 + i % 3],
       'active', 600, '2023-01-01'
FROM generate_series(0, $1 - 1) AS i;
"""
ROLLUP_SQL = """
INSERT INTO {table} (device_id, metric, bucket, count, sum, sum_sq, min, max, flagged,
                     first_ts, first_value, last_ts, last_value, increase)
SELECT 'dev-' || i, m, b, {n}, {n} * 20.0, {n} * 400.0, 15, 25, 0, b, 20, b, 20,
       CASE WHEN m = 'energy_import_kwh' THEN 5.0 END
FROM generate_series(0, $1 - 1) AS i, unnest($2::text[]) AS m,
     generate_series('2024-01-01'::timestamptz, '2024-12-31'::timestamptz, $3::text::interval) AS b
"""


def quantiles(samples: list[float]) -> tuple[float, float]:
    """p50 and p95 in milliseconds."""
    cuts = statistics.quantiles(samples, n=100)
    return cuts[49] * 1000, cuts[94] * 1000


@contextlib.contextmanager
def private_cluster() -> Iterator[str]:
    """A throwaway PostgreSQL cluster's DSN."""
    with tempfile.TemporaryDirectory() as tmp:
        cluster = PostgresCluster(Path(tmp) / "pg", free_port(), settings={"fsync": "off"})
        cluster.start()
        try:
            yield cluster.create_database("bench")
        finally:
            cluster.stop()


async def fill(dsn: str, devices: int, hourly_devices: int) -> None:
    """Generate the store."""
    await apply_migrations(dsn)
    conn = await asyncpg.connect(dsn, server_settings={"timezone": "UTC"})
    try:
        started = time.perf_counter()
        await conn.execute(FILL_SQL.replace("$1", str(int(devices))))
        await conn.execute(ROLLUP_SQL.format(table="readings_monthly", n=4000), devices, METRICS, "1 month")
        await conn.execute(ROLLUP_SQL.format(table="readings_hourly", n=6), hourly_devices, METRICS, "1 hour")
        # The twelve months up to the current one, for a rolling year (temperature only).
        await conn.execute(ROLLING_SQL, devices)
        # As autovacuum leaves a settled store: rollups of closed months all-visible, so the statistics
        # query's index-only scan skips the heap. Without it the first minute of measurements read the
        # heap while autovacuum worked through 2M fresh rows on the same cores.
        await conn.execute("VACUUM (ANALYZE)")
        print(f"store filled in {time.perf_counter() - started:.1f} s")
    finally:
        await conn.close()


ROLLING_SQL = """
INSERT INTO readings_monthly (device_id, metric, bucket, count, sum, sum_sq, min, max, flagged,
                              first_ts, first_value, last_ts, last_value)
SELECT 'dev-' || i, 'temperature', b, 4000, 80000.0, 1600000.0, 15, 25, 0, b, 20, b, 20
FROM generate_series(0, $1 - 1) AS i,
     generate_series(date_trunc('month', now() AT TIME ZONE 'UTC') - interval '11 months',
                     date_trunc('month', now() AT TIME ZONE 'UTC'), interval '1 month') AS m(local),
     LATERAL (SELECT m.local AT TIME ZONE 'UTC' AS b) AS x
"""


async def measure(client: httpx.AsyncClient, path: str, params: dict[str, str], runs: int) -> list[float]:
    """Latency of ``runs`` sequential requests after a short warm-up."""

    async def request() -> None:
        resp = await client.get(path, params=params)
        assert resp.status_code == 200, resp.text

    return await timed(request, runs)


async def timed(call: Callable[[], Awaitable[object]], runs: int) -> list[float]:
    """Seconds taken by each of ``runs`` sequential calls after ten warm-up calls."""
    samples = []
    for i in range(runs + 10):
        started = time.perf_counter()
        await call()
        if i >= 10:
            samples.append(time.perf_counter() - started)
    return samples


def rolling_year() -> tuple[str, str]:
    """The twelve months up to the current one, as ``start`` and ``end`` (YYYY-MM)."""
    today = datetime.now(UTC).date()
    first = today.year * 12 + today.month - 1 - 11
    return f"{first // 12:04d}-{first % 12 + 1:02d}", f"{today:%Y-%m}"


def comparable(body: dict[str, Any], current: str) -> dict[str, Any]:
    """``body`` without what moves with the clock: the current month's expected readings so far."""
    for item in body["items"]:
        if item["period"] == current:
            del item["readings_expected"], item["completeness"]
    return body


async def run(dsn: str, args: argparse.Namespace) -> None:
    """Fill, then measure in-process (httpx ASGI transport: no network in the figures).

    The statistics endpoint is measured three ways: with the cache of closed months disabled (every
    request queries all twelve months: the cost of a first request, or of one after a change), with
    it (the service's default: after the first request, closed months come from memory while the
    store's change counters stand still), and over the rolling year up to the current month (eleven
    months kept, the current one queried every time).
    """
    await fill(dsn, args.devices, args.hourly_devices)
    key = await create_api_key(dsn, "bench", [s.value for s in Scope])
    app = create_app(ApiSettings(database_url=dsn))
    cold_app = create_app(ApiSettings(database_url=dsn, statistics_cache_rows=0, sdmx_cache_bytes=0))
    year = {"metric": "temperature", "start": "2024-01", "end": "2024-12", "by": "district"}
    first, last = rolling_year()
    rolling = {**year, "start": first, "end": last}
    # The machine may be shared: a load above its core count explains a slow run.
    load_before = os.getloadavg()[0]
    headers = {"Authorization": f"Bearer {key}"}
    async with app.router.lifespan_context(app), cold_app.router.lifespan_context(cold_app):
        async with (
            httpx.AsyncClient(
                transport=httpx.ASGITransport(app=cold_app), base_url="http://api", headers=headers
            ) as cold,
            httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app), base_url="http://api", headers=headers
            ) as client,
        ):
            uncached = await measure(cold, "/v1/statistics/monthly", year, args.runs)
            cached = await measure(client, "/v1/statistics/monthly", year, args.runs)
            current = await measure(client, "/v1/statistics/monthly", rolling, args.runs)
            same = comparable((await cold.get("/v1/statistics/monthly", params=rolling)).json(), last) == (
                comparable((await client.get("/v1/statistics/monthly", params=rolling)).json(), last)
            )
            series = await measure(
                client,
                "/v1/series",
                {
                    "device_id": "dev-7",
                    "metric": "temperature",
                    "bucket": "1h",
                    "start": "2024-06-01T00:00:00Z",
                    "end": "2024-07-01T00:00:00Z",
                },
                args.runs,
            )
            release = await publish_year(client)
            sdmx = await measure_sdmx(client, release, args.runs)
            sdmx_uncached = await measure_sdmx(cold, release, args.runs)
        # The statistics query alone, as the endpoint runs it: the rest of a request is the application.
        domains = app.state.catalogue["temperature"].domains
        sql = await timed(lambda: statistics_query(app.state.pool, domains), args.runs)
    load_after = os.getloadavg()[0]
    # Only a private cluster is surely on this machine, where its backend's /proc entry can be read.
    cpu = None if args.database_url else await server_cpu_ms(dsn, domains, args.runs)
    print(f"release 1 (12 months, every metric and breakdown) published in {release.seconds:.1f} s")
    for name, samples, target in (
        ("statistics/monthly year by district, no cache (every month queried)", uncached, 100),
        ("statistics/monthly year by district, default (closed months kept)", cached, 100),
        (f"statistics/monthly {first}..{last} by district, default", current, 100),
        ("series 1h x 30 days", series, 30),
        ("sdmx data year by district from release 1, SDMX-ML generic", sdmx.data, 50),
        ("sdmx data year by district from release 1, SDMX-CSV 1.0", sdmx.csv, 50),
        ("sdmx data ... SDMX-ML generic, no cache (rendered every time)", sdmx_uncached.data, 50),
        ("sdmx data ... SDMX-CSV 1.0, no cache (rendered every time)", sdmx_uncached.csv, 50),
        ("sdmx dataflow references=all (SDMX-ML structure)", sdmx.structure, 30),
    ):
        p50, p95 = quantiles(samples)
        print(
            f"{name:72s} p50 {p50:7.1f} ms  p95 {p95:7.1f} ms  target p95 < {target} ms  "
            f"{'OK' if p95 < target else 'MISSED'}"
        )
    print(f"rolling year: the cached and uncached bodies are {'identical' if same else 'DIFFERENT'}")
    p50, p95 = quantiles(sql)
    print(f"{'statistics SQL alone, all twelve months':72s} p50 {p50:7.1f} ms  p95 {p95:7.1f} ms")
    if cpu is not None:
        print(f"{'statistics SQL server CPU, serial plan':72s} median {cpu:5.1f} ms per query")
    print(f"load average (1 min) {load_before:.1f} before, {load_after:.1f} after, {os.cpu_count()} CPUs")
    print(
        "sdmx: release 1's data message is "
        f"{'the same bytes' if sdmx.stable and sdmx.body == sdmx_uncached.body else 'DIFFERENT'} "
        "on every request, cached or rendered"
    )
    if not same:
        raise SystemExit("the cached statistics differ from the uncached ones")
    if not (sdmx.stable and sdmx_uncached.stable and sdmx.body == sdmx_uncached.body):
        raise SystemExit("a release's SDMX data message changed between requests")


@dataclass(frozen=True, slots=True)
class Release:
    """The release the SDMX figures read, and how long publishing it took."""

    number: int
    seconds: float


@dataclass(frozen=True, slots=True)
class SdmxFigures:
    """Latencies of the SDMX service over a release, and the data message it answered."""

    data: list[float]
    csv: list[float]
    structure: list[float]
    body: bytes
    stable: bool


SDMX_YEAR_BY_DISTRICT = "/sdmx/data/CITY_SENSORS_MONTHLY/M.._T._T.temperature."


async def publish_year(client: httpx.AsyncClient) -> Release:
    """Publish 2024 as a release (every metric, every breakdown)."""
    started = time.perf_counter()
    published = await client.post(
        "/v1/statistics/releases",
        json={"months": [f"2024-{m:02d}" for m in range(1, 13)], "note": "bench"},
    )
    assert published.status_code == 201, published.text
    return Release(int(published.json()["release"]), time.perf_counter() - started)


async def measure_sdmx(client: httpx.AsyncClient, release: Release, runs: int) -> SdmxFigures:
    """Time SDMX data of a year by district from ``release`` and the dataflow with its references."""
    year = {"startPeriod": "2024-01", "endPeriod": "2024-12", "release": str(release.number)}
    data = await measure(client, SDMX_YEAR_BY_DISTRICT, year, runs)
    csv = await measure(client, SDMX_YEAR_BY_DISTRICT, {**year, "format": "csvfile"}, runs)
    structure = await measure(
        client, "/sdmx/dataflow/CITYINGEST/CITY_SENSORS_MONTHLY/latest", {"references": "all"}, runs
    )
    bodies = {(await client.get(SDMX_YEAR_BY_DISTRICT, params=year)).content for _ in range(3)}
    return SdmxFigures(data, csv, structure, next(iter(bodies)), len(bodies) == 1)


async def statistics_query(pool: asyncpg.Pool, domains: Sequence[str]) -> object:
    """The statistics endpoint's query for a year by district of temperature (catalogue ``domains``)."""
    months = month_range(date(2024, 1, 1), date(2024, 12, 1), 12)
    return await report_queries.monthly_statistics(
        pool, "temperature", months, datetime.now(UTC), domains, ["district"], [None] * 3
    )


async def server_cpu_ms(dsn: str, domains: Sequence[str], runs: int) -> float | None:
    """Median server CPU of the statistics query run without parallel workers (the server must be local).

    Unlike latency it barely moves when other jobs share the machine, so it compares changes.
    """
    pool = await asyncpg.create_pool(
        dsn,
        min_size=1,
        max_size=1,
        server_settings={"timezone": "UTC", "max_parallel_workers_per_gather": "0"},
    )
    try:
        pid = await pool.fetchval("SELECT pg_backend_pid()")
        if process_cpu_s(pid) is None:
            return None  # not this machine's process after all
        await statistics_query(pool, domains)
        # Batches of ten: the clock ticks every 10 ms.
        per_query = []
        for _ in range(max(1, runs // 10)):
            before = process_cpu_s(pid) or 0.0
            for _ in range(10):
                await statistics_query(pool, domains)
            per_query.append(((process_cpu_s(pid) or 0.0) - before) / 10 * 1000)
        return statistics.median(per_query)
    finally:
        await pool.close()


def process_cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of a local process, None if there is none."""
    try:
        return cpu_seconds(pid)
    except OSError:
        return None


def main() -> None:
    """Parse arguments and run."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--database-url", help="an empty database to fill (default: a private cluster)")
    parser.add_argument("--devices", type=int, default=10_000)
    parser.add_argument("--hourly-devices", type=int, default=50)
    parser.add_argument("--runs", type=int, default=200)
    args = parser.parse_args()
    if args.database_url:
        asyncio.run(run(args.database_url, args))
        return
    with private_cluster() as dsn:
        asyncio.run(run(dsn, args))


if __name__ == "__main__":
    main()

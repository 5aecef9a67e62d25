"""API latency: p50/p95 of /v1/statistics/monthly (a year by district) and /v1/series (1h, 30 days).

The store: 10,000 devices x 5 metrics x 12 months of monthly rollups, and hourly rollups of the same
metrics for ``--hourly-devices`` devices (all 10,000 would be 438M rows; a series query reads one
device's rows through the primary key, so its latency does not depend on how many other devices exist).
Rows are generated in SQL straight into the rollup tables: this measures reads, not the consumer.

    .venv/bin/python -m bench.api [--database-url URL] [--devices 10000] [--hourly-devices 50] [--runs 200]

Run it as a module (as a script, ``bench/api.py`` would shadow the ``api`` package). Without
``--database-url`` a private PostgreSQL cluster is started in a temporary directory.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import httpx

from api.app import create_app
from api.auth import Scope
from api.keys import create_api_key
from api.settings import ApiSettings
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
        await conn.execute("ANALYZE")
        print(f"store filled in {time.perf_counter() - started:.1f} s")
    finally:
        await conn.close()


async def measure(client: httpx.AsyncClient, path: str, params: dict[str, str], runs: int) -> list[float]:
    """Latency of ``runs`` sequential requests after a short warm-up."""
    samples = []
    for i in range(runs + 10):
        started = time.perf_counter()
        resp = await client.get(path, params=params)
        elapsed = time.perf_counter() - started
        assert resp.status_code == 200, resp.text
        if i >= 10:
            samples.append(elapsed)
    return samples


async def run(dsn: str, args: argparse.Namespace) -> None:
    """Fill, then measure both queries in-process (httpx ASGI transport: no network in the figures)."""
    await fill(dsn, args.devices, args.hourly_devices)
    key = await create_api_key(dsn, "bench", [s.value for s in Scope])
    app = create_app(ApiSettings(database_url=dsn))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        headers = {"Authorization": f"Bearer {key}"}
        async with httpx.AsyncClient(transport=transport, base_url="http://api", headers=headers) as client:
            stats = await measure(
                client,
                "/v1/statistics/monthly",
                {"metric": "temperature", "start": "2024-01", "end": "2024-12", "by": "district"},
                args.runs,
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
    for name, samples, target in (
        ("statistics/monthly year by district", stats, 100),
        ("series 1h x 30 days", series, 30),
    ):
        p50, p95 = quantiles(samples)
        print(
            f"{name:40s} p50 {p50:7.1f} ms  p95 {p95:7.1f} ms  target p95 < {target} ms  "
            f"{'OK' if p95 < target else 'MISSED'}"
        )


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

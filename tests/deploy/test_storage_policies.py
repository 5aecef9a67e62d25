"""Migration 0020: TimescaleDB edition detection and the Apache-edition fallback, on a real database.

The session's PostgreSQL runs TimescaleDB's Apache edition, so the community-edition path (compression
and retention jobs) cannot run here; its decision is tested through the pure SQL function instead.
"""

from __future__ import annotations

import datetime as dt
import uuid

import asyncpg
import pytest

from devstack.postgres import PostgresCluster
from migrations import apply_migrations

pytestmark = pytest.mark.integration


@pytest.mark.parametrize(
    ("license_", "has_functions", "enabled", "compression_detail"),
    [
        ("timescale", True, True, "compression enabled: community edition"),
        ("apache", True, False, "compression disabled: apache edition"),
        ("apache", False, False, "compression disabled: apache edition"),
        ("timescale", False, False, "compression disabled: policy functions missing"),
        (None, True, False, "compression disabled: timescaledb license unknown"),
        ("", True, False, "compression disabled: timescaledb license unknown"),
        ("enterprise", True, False, "compression disabled: unknown timescaledb license 'enterprise'"),
    ],
)
async def test_feature_decision(
    database_url: str,
    license_: str | None,
    has_functions: bool,
    enabled: bool,
    compression_detail: str,
) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch(
            "SELECT name, enabled, detail FROM cityingest_timescale_features($1, $2) ORDER BY name",
            license_,
            has_functions,
        )
    finally:
        await conn.close()
    decided = {r["name"]: (r["enabled"], r["detail"]) for r in rows}
    assert set(decided) == {"compression", "retention_policy"}
    assert decided["compression"] == (enabled, compression_detail)
    assert decided["retention_policy"][0] is enabled
    if not enabled:
        assert decided["retention_policy"][1].endswith("; the consumer drops expired raw chunks")


async def test_apache_edition_falls_back_to_the_consumer(database_url: str) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        assert await conn.fetchval("SELECT current_setting('timescaledb.license')") == "apache"
        features = {
            r["name"]: (r["enabled"], r["detail"])
            for r in await conn.fetch("SELECT name, enabled, detail FROM store_features")
        }
        assert features == {
            "compression": (False, "compression disabled: apache edition"),
            "retention_policy": (
                False,
                "retention policy disabled: apache edition; the consumer drops expired raw chunks",
            ),
        }
        settings = {r["name"]: r["value"] for r in await conn.fetch("SELECT name, value FROM store_settings")}
        assert settings == {"raw_retention": dt.timedelta(days=90), "compress_after": dt.timedelta(days=7)}
        # Re-applying (what an operator does after changing store_settings) is a no-op here.
        again = await conn.fetch("SELECT name, enabled FROM cityingest_apply_storage_policies()")
        assert [(r["name"], r["enabled"]) for r in again] == [
            ("compression", False),
            ("retention_policy", False),
        ]
        jobs = await conn.fetchval(
            "SELECT count(*) FROM timescaledb_information.jobs WHERE hypertable_name = 'readings'"
        )
        assert jobs == 0
        compressed = await conn.fetchval(
            "SELECT compression_enabled FROM timescaledb_information.hypertables "
            "WHERE hypertable_name = 'readings'"
        )
        assert compressed is False
        # The fallback's own tool works on this edition: drop_chunks removes expired raw chunks.
        await conn.execute(
            "INSERT INTO readings (device_id, metric, ts, value) VALUES "
            "('d1', 'temperature', now() - interval '200 days', 1), ('d1', 'temperature', now(), 2)"
        )
        dropped = await conn.fetch(
            "SELECT drop_chunks('readings', older_than => (SELECT value FROM store_settings "
            "WHERE name = 'raw_retention'))"
        )
        assert len(dropped) == 1
        assert await conn.fetchval("SELECT count(*) FROM readings") == 1
    finally:
        await conn.close()


async def test_policy_ages_come_from_the_migrating_connection(pg_cluster: PostgresCluster) -> None:
    name = f"policy_ages_{uuid.uuid4().hex[:8]}"
    dsn = pg_cluster.create_database(name)
    # asyncpg passes unknown DSN query parameters as server settings: the custom GUCs 0020 reads.
    applied = await apply_migrations(
        f"{dsn}?cityingest.raw_retention_days=30&cityingest.compress_after_days=1.5"
    )
    assert "0008_storage_policies.sql" in applied
    conn = await asyncpg.connect(dsn)
    try:
        settings = {r["name"]: r["value"] for r in await conn.fetch("SELECT name, value FROM store_settings")}
    finally:
        await conn.close()
    assert settings == {
        "raw_retention": dt.timedelta(days=30),
        "compress_after": dt.timedelta(days=1, hours=12),
    }

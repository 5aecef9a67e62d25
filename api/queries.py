"""The SQL of the device registry and of readings (series, latest, aggregates), with ``$n`` parameters.

The API's other SQL sits with its concern, under the same rules: keys in :mod:`api.key_queries`, the
monthly reports in :mod:`api.report_queries`, the operators' view in :mod:`api.ops.queries`. Every
query function is :func:`api.storeerrors.translated`: driver errors leave it as our classes.

Bucketed queries read the rollup tables the consumer maintains, never the raw readings; only a
``bucket=raw`` series reads ``readings``, for one device and metric over a bounded range. The only
identifiers interpolated into SQL are rollup table names and group-by columns, each chosen from a
fixed mapping of this module (never from request text).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, Final, Literal

import asyncpg

from api.storeerrors import translated
from core.types import ROLLUP_TABLES

Pool = asyncpg.Pool
Record = asyncpg.Record
RollupBucket = Literal["1h", "1d", "1mo"]
GroupColumn = Literal["district", "domain", "provenance"]
GROUP_COLUMNS: Final[tuple[GroupColumn, ...]] = ("district", "domain", "provenance")

_ROLLUP_TABLE: Final[dict[RollupBucket, str]] = {
    "1h": ROLLUP_TABLES["hourly"],
    "1d": ROLLUP_TABLES["daily"],
    "1mo": ROLLUP_TABLES["monthly"],
}
_DEVICE_COLUMNS: Final = """
    device_id, domain, site, district, lat, lon, provenance, status, expected_interval_s,
    registered_at, updated_at, first_seen, last_seen, last_reading_at"""


def _groups(group_by: Sequence[GroupColumn]) -> str:
    # Whitelisted column names; a column not grouped by is a NULL constant so every query has the
    # same three output columns.
    return ", ".join(f"d.{c} AS {c}" if c in group_by else f"NULL::text AS {c}" for c in GROUP_COLUMNS)


# Device filters shared by the city-wide queries: $district, $domain, $provenance (NULL = any).
def _device_filter(first: int) -> str:
    return (
        f"(${first}::text IS NULL OR d.district = ${first}) "
        f"AND (${first + 1}::text IS NULL OR d.domain = ${first + 1}) "
        f"AND (${first + 2}::text IS NULL OR d.provenance = ${first + 2})"
    )


@translated(request_data=True)
async def list_devices(
    pool: Pool, filters: Sequence[str | None], status: str | None, after: str | None, limit: int
) -> list[Record]:
    """Devices matching ``filters`` (district, domain, provenance) and ``status``, by id after ``after``."""
    sql = f"""
    SELECT {_DEVICE_COLUMNS} FROM devices d
    WHERE {_device_filter(1)} AND ($4::text IS NULL OR d.status = $4)
      AND ($5::text IS NULL OR d.device_id > $5)
    ORDER BY d.device_id LIMIT $6"""  # noqa: S608 - fixed column list and placeholders only
    return await pool.fetch(sql, *filters, status, after, limit)


@translated(request_data=True)
async def get_device(pool: Pool, device_id: str) -> Record | None:
    """One device, or None."""
    return await pool.fetchrow(f"SELECT {_DEVICE_COLUMNS} FROM devices WHERE device_id = $1", device_id)  # noqa: S608


_UPSERT_SQL: Final = f"""
INSERT INTO devices AS d (device_id, domain, site, district, lat, lon, provenance, status,
                          expected_interval_s, registered_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, coalesce($10, now()))
ON CONFLICT (device_id) DO UPDATE SET
    domain = EXCLUDED.domain, site = EXCLUDED.site, district = EXCLUDED.district,
    lat = EXCLUDED.lat, lon = EXCLUDED.lon, provenance = EXCLUDED.provenance, status = EXCLUDED.status,
    expected_interval_s = EXCLUDED.expected_interval_s,
    -- An auto-registered device keeps its registration time unless the caller gives one.
    registered_at = coalesce($10, d.registered_at),
    updated_at = now()
    -- first_seen, last_seen and last_reading_at belong to the consumer and are never touched here.
RETURNING {_DEVICE_COLUMNS}, (xmax = 0) AS created
"""  # noqa: S608


@translated(request_data=True)
async def upsert_device(pool: Pool, device_id: str, values: Sequence[Any]) -> Record:
    """Register or update a device's descriptive columns; the row has ``created``."""
    row = await pool.fetchrow(_UPSERT_SQL, device_id, *values)
    assert row is not None  # noqa: S101 - INSERT .. RETURNING always returns the row
    return row


_LATEST_SQL: Final = """
SELECT m.metric, h.last_ts, h.last_value
FROM (SELECT DISTINCT metric FROM readings_monthly WHERE device_id = $1) AS m
CROSS JOIN LATERAL (
    SELECT last_ts, last_value FROM readings_hourly h
    WHERE h.device_id = $1 AND h.metric = m.metric ORDER BY h.bucket DESC LIMIT 1
) AS h
ORDER BY m.metric
"""


@translated(request_data=True)
async def latest(pool: Pool, device_id: str) -> list[Record]:
    """Latest reading time and value of each metric of a device, from its newest hourly rollup."""
    return await pool.fetch(_LATEST_SQL, device_id)


@translated(request_data=True)
async def series(
    pool: Pool,
    bucket: RollupBucket,
    device_id: str,
    metric: str,
    start: datetime,
    end: datetime,
    after: datetime | None,
    limit: int,
) -> list[Record]:
    """Rollup rows of one device and metric whose bucket starts in [start, end), after ``after``."""
    sql = f"""
    SELECT bucket, count, sum, min, max, flagged, increase FROM {_ROLLUP_TABLE[bucket]}
    WHERE device_id = $1 AND metric = $2 AND bucket >= $3 AND bucket < $4
      AND ($5::timestamptz IS NULL OR bucket > $5)
    ORDER BY bucket LIMIT $6"""  # noqa: S608 - table name from a fixed mapping
    return await pool.fetch(sql, device_id, metric, start, end, after, limit)


@translated(request_data=True)
async def raw_series(
    pool: Pool,
    device_id: str,
    metric: str,
    start: datetime,
    end: datetime,
    after: datetime | None,
    limit: int,
) -> list[Record]:
    """Raw readings of one device and metric in [start, end), after ``after``."""
    return await pool.fetch(
        """SELECT ts, value, flags FROM readings
        WHERE device_id = $1 AND metric = $2 AND ts >= $3 AND ts < $4 AND ($5::timestamptz IS NULL OR ts > $5)
        ORDER BY ts LIMIT $6""",
        device_id,
        metric,
        start,
        end,
        after,
        limit,
    )


@translated(request_data=True)
async def aggregates(
    pool: Pool,
    bucket: RollupBucket,
    group_by: Sequence[GroupColumn],
    metric: str,
    start: datetime,
    end: datetime,
    filters: Sequence[str | None],
    after: Sequence[Any] | None,
    limit: int,
) -> list[Record]:
    """City-level rollups of ``metric`` per bucket and group, keyset-paged after ``after``."""
    sql = f"""
    SELECT * FROM (
        SELECT r.bucket, {_groups(group_by)}, count(*) AS devices, sum(r.count)::int8 AS count,
               sum(r.sum) AS sum, min(r.min) AS min, max(r.max) AS max, sum(r.flagged)::int8 AS flagged,
               sum(r.increase) AS increase
        FROM {_ROLLUP_TABLE[bucket]} r JOIN devices d ON d.device_id = r.device_id
        WHERE r.metric = $1 AND r.bucket >= $2 AND r.bucket < $3 AND {_device_filter(4)}
          AND ($7::timestamptz IS NULL OR r.bucket >= $7)
        GROUP BY 1, 2, 3, 4
    ) AS a
    WHERE $7::timestamptz IS NULL
       OR (a.bucket, coalesce(a.district, ''), coalesce(a.domain, ''), coalesce(a.provenance, ''))
          > ($7, $8, $9, $10)
    ORDER BY a.bucket, coalesce(a.district, ''), coalesce(a.domain, ''), coalesce(a.provenance, '')
    LIMIT $11"""  # noqa: S608 - table and columns from fixed mappings
    keys = list(after) if after is not None else [None, None, None, None]
    return await pool.fetch(sql, metric, start, end, *filters, *keys, limit)

"""Helpers for the consumer tests: read the rollups, recompute them from raw in SQL, compare with a truth."""

from __future__ import annotations

from collections.abc import Iterable

import asyncpg

from consumers.rollup import LEVELS, Bucket, BucketKey, Level, Rollups, StoredReading
from core.readings import to_us
from core.types import ROLLUP_TABLES

_WIDTH: dict[Level, str] = {"hourly": "1 hour", "daily": "1 day", "monthly": "1 month"}

_COLUMNS = """device_id, metric, bucket, count, sum, sum_sq, min, max, flagged,
              first_ts, first_value, last_ts, last_value, increase"""

_RECOMPUTE = """
WITH s AS (
    SELECT device_id, metric, ts, value, flags,
           CASE WHEN metric = ANY($1::text[])
                THEN counter_increase(lag(value) OVER (PARTITION BY device_id, metric ORDER BY ts), value)
           END AS inc
    FROM readings
)
SELECT device_id, metric, time_bucket($2::text::interval, ts) AS bucket, count(*) AS count, sum(value) AS sum,
       sum(value * value) AS sum_sq, min(value) AS min, max(value) AS max,
       count(*) FILTER (WHERE flags & 3 <> 0) AS flagged,
       min(ts) AS first_ts, first(value, ts) AS first_value,
       max(ts) AS last_ts, last(value, ts) AS last_value,
       sum(inc) AS increase
FROM s GROUP BY 1, 2, 3
"""


def _bucket(row: asyncpg.Record) -> Bucket:
    return Bucket(
        count=int(row["count"]),
        sum=float(row["sum"]),
        sum_sq=float(row["sum_sq"]),
        min=float(row["min"]),
        max=float(row["max"]),
        flagged=int(row["flagged"]),
        first_ts_us=to_us(row["first_ts"]),
        first_value=float(row["first_value"]),
        last_ts_us=to_us(row["last_ts"]),
        last_value=float(row["last_value"]),
        increase=None if row["increase"] is None else float(row["increase"]),
    )


def _key(row: asyncpg.Record, level: Level) -> BucketKey:
    return (row["device_id"], row["metric"], level, to_us(row["bucket"]))


async def stored_rollups(conn: asyncpg.Connection) -> Rollups:
    """Every rollup row of the three tables."""
    out: Rollups = {}
    for level in LEVELS:
        # The table name comes from a constant mapping.
        rows = await conn.fetch(f"SELECT {_COLUMNS} FROM {ROLLUP_TABLES[level]}")  # noqa: S608
        out.update({_key(r, level): _bucket(r) for r in rows})
    return out


async def recomputed_rollups(conn: asyncpg.Connection, counters: Iterable[str]) -> Rollups:
    """Every rollup recomputed directly from the raw readings table, in SQL."""
    out: Rollups = {}
    for level in LEVELS:
        rows = await conn.fetch(_RECOMPUTE, sorted(counters), _WIDTH[level])
        out.update({_key(r, level): _bucket(r) for r in rows})
    return out


async def stored_readings(conn: asyncpg.Connection) -> dict[tuple[str, str, int], StoredReading]:
    """The raw readings table."""
    rows = await conn.fetch("SELECT device_id, metric, ts, value, flags FROM readings")
    out = {}
    for r in rows:
        sr = StoredReading(r["device_id"], r["metric"], to_us(r["ts"]), float(r["value"]), int(r["flags"]))
        out[sr.key] = sr
    return out


def diff(actual: Rollups, expected: Rollups, limit: int = 5) -> str:
    """A short human-readable difference between two sets of rollups ('' when equal)."""
    lines = []
    for key in sorted(set(actual) | set(expected)):
        a, e = actual.get(key), expected.get(key)
        if a != e:
            lines.append(f"{key}: stored={a} expected={e}")
    extra = f"\n... {len(lines) - limit} more" if len(lines) > limit else ""
    return "\n".join(lines[:limit]) + extra

"""All SQL of the API side, always with ``$n`` parameters.

Bucketed queries read the rollup tables the consumer maintains, never the raw readings; only a
``bucket=raw`` series reads ``readings``, for one device and metric over a bounded range. The only
identifiers interpolated into SQL are rollup table names and group-by columns, each chosen from a
fixed mapping of this module (never from request text).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, Literal

import asyncpg

Pool = asyncpg.Pool
Record = asyncpg.Record
RollupBucket = Literal["1h", "1d", "1mo"]
GroupColumn = Literal["district", "domain", "provenance"]
GROUP_COLUMNS: Final[tuple[GroupColumn, ...]] = ("district", "domain", "provenance")

_ROLLUP_TABLE: Final[dict[RollupBucket, str]] = {
    "1h": "readings_hourly",
    "1d": "readings_daily",
    "1mo": "readings_monthly",
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


@dataclass(frozen=True, slots=True)
class KeyRow:
    """What the store holds about one API key."""

    name: str
    secret_sha256: bytes
    scopes: list[str]
    revoked: bool


_KEY_SQL: Final = """
WITH touched AS (
    -- Record use at most once a minute, so reads do not turn into a write per request.
    UPDATE api_keys SET last_used_at = now()
    WHERE key_id = $1 AND secret_sha256 = $2 AND revoked_at IS NULL
      AND (last_used_at IS NULL OR last_used_at < now() - interval '1 minute')
)
SELECT name, secret_sha256, scopes, revoked_at IS NOT NULL AS revoked FROM api_keys WHERE key_id = $1
"""


async def api_key(pool: Pool, key_id: str, digest: bytes) -> KeyRow | None:
    """The key ``key_id``, marking it used when ``digest`` matches."""
    row = await pool.fetchrow(_KEY_SQL, key_id, digest)
    if row is None:
        return None
    return KeyRow(row["name"], bytes(row["secret_sha256"]), list(row["scopes"]), row["revoked"])


async def insert_api_key(
    conn: asyncpg.Connection, key_id: str, name: str, digest: bytes, scopes: Sequence[str]
) -> None:
    """Store a new key (its hash only)."""
    await conn.execute(
        "INSERT INTO api_keys (key_id, name, secret_sha256, scopes) VALUES ($1, $2, $3, $4)",
        key_id,
        name,
        digest,
        list(scopes),
    )


@dataclass(frozen=True)
class ApiKeyInfo:
    """What an operator may see of a key: everything but its secret's hash."""

    key_id: str
    name: str
    scopes: list[str]
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None


async def list_api_keys(conn: asyncpg.Connection) -> list[ApiKeyInfo]:
    """Every key, newest first."""
    rows = await conn.fetch(
        "SELECT key_id, name, scopes, created_at, last_used_at, revoked_at FROM api_keys "
        "ORDER BY created_at DESC, key_id"
    )
    return [
        ApiKeyInfo(
            r["key_id"], r["name"], list(r["scopes"]), r["created_at"], r["last_used_at"], r["revoked_at"]
        )
        for r in rows
    ]


async def active_api_key(conn: asyncpg.Connection, key_id: str, digest: bytes) -> list[str] | None:
    """The scopes of key ``key_id`` when its secret hashes to ``digest`` and it is not revoked."""
    scopes = await conn.fetchval(
        "SELECT scopes FROM api_keys WHERE key_id = $1 AND secret_sha256 = $2 AND revoked_at IS NULL",
        key_id,
        digest,
    )
    return None if scopes is None else list(scopes)


async def revoke_api_key(conn: asyncpg.Connection, key_id: str) -> bool:
    """Revoke a key; False if there is no such unrevoked key."""
    status = await conn.execute(
        "UPDATE api_keys SET revoked_at = now() WHERE key_id = $1 AND revoked_at IS NULL", key_id
    )
    return bool(status.endswith(" 1"))


_CURSOR_KEY_SQL: Final = """
WITH made AS (INSERT INTO api_cursor_key (secret) VALUES ($1) ON CONFLICT (one) DO NOTHING RETURNING secret)
SELECT secret FROM made UNION ALL SELECT secret FROM api_cursor_key
"""


async def cursor_key(pool: Pool, candidate: bytes) -> bytes:
    """The stored cursor-signing key; ``candidate`` becomes it if none is stored yet."""
    secret = await pool.fetchval(_CURSOR_KEY_SQL, candidate)
    if secret is None:
        # Another process inserted it after this statement's snapshot was taken: the next one sees it.
        secret = await pool.fetchval(_CURSOR_KEY_SQL, candidate)
    assert secret is not None  # noqa: S101 - the row exists once any process inserted it
    return bytes(secret)


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


async def latest(pool: Pool, device_id: str) -> list[Record]:
    """Latest reading time and value of each metric of a device, from its newest hourly rollup."""
    return await pool.fetch(_LATEST_SQL, device_id)


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


# Devices the consumer inserted on their first reading and nobody registered since (the operators'
# overview): how many, and the newest few by first reading.
_UNREGISTERED_COUNT_SQL: Final = "SELECT count(*) FROM devices WHERE status = 'unregistered'"
_UNREGISTERED_SQL: Final = """
SELECT device_id, domain, first_seen, last_seen FROM devices WHERE status = 'unregistered'
ORDER BY first_seen DESC NULLS LAST, device_id LIMIT $1"""


async def unregistered_devices(pool: Pool, limit: int) -> tuple[int, list[Record]]:
    """The number of unregistered devices and the ``limit`` most recently first seen."""
    async with pool.acquire() as conn:
        count = int(await conn.fetchval(_UNREGISTERED_COUNT_SQL))
        rows = await conn.fetch(_UNREGISTERED_SQL, limit) if limit > 0 else []
    return count, rows

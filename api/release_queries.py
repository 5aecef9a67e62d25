"""The SQL of published statistics releases (migration 0012), with ``$n`` parameters.

Released cells are read by their primary key prefix (release, metric, breakdown, period). Breakdown
values are stored as the cells carry them, except "unknown" (a device without a district), which is
``''`` in the store (keys cannot be NULL) and None in a :class:`api.statistics.StatisticsCell`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import date, datetime
from typing import TYPE_CHECKING, Any, Final, TypeAlias

import asyncpg

from api.queries import Pool, Record
from api.statistics import CELL_VALUES, StatisticsCell
from api.storeerrors import translated

if TYPE_CHECKING:
    from asyncpg.pool import PoolConnectionProxy

    Connection: TypeAlias = asyncpg.Connection[Record] | PoolConnectionProxy[Record]
RELEASE_LOCK: Final = 0x0C171E58
"""Advisory lock key held while a release is computed and stored: releases are made one at a time."""

CELL_COLUMNS: Final = CELL_VALUES
_KEY_COLUMNS: Final = ("district", "domain", "provenance")
_RELEASE_COLUMNS: Final = """release, published_at, note, months, metrics, suppression_k, completeness_rule,
    specs, metadata, key_id, cells, revisions"""


def stored_key(value: str | None) -> str:
    """A breakdown value as the store keeps it ('' for unknown)."""
    return "" if value is None else value


def cell_of(row: Record, release: int) -> StatisticsCell:
    """A stored cell as published by ``release``."""
    period: date = row["period"]
    return StatisticsCell(
        period=f"{period.year:04d}-{period.month:02d}",
        district=row["district"] or None,
        domain=row["domain"] or None,
        provenance=row["provenance"] or None,
        release=release,
        **{name: row[name] for name in CELL_COLUMNS},
    )


# $1 metric, $2 periods, $3 exact release (NULL = latest), $4 published at or before (NULL = any).
_LATEST_SQL: Final = """
SELECT c.period, max(c.release) AS release
FROM statistics_release_contents c JOIN statistics_releases r ON r.release = c.release
WHERE c.metric = $1 AND c.period = ANY($2::date[])
  AND ($3::int IS NULL OR c.release = $3) AND ($4::timestamptz IS NULL OR r.published_at <= $4)
GROUP BY c.period
"""


@translated(request_data=True)
async def releases_of(
    conn: Pool | Connection,
    metric: str,
    periods: Sequence[date],
    release: int | None,
    as_of: datetime | None,
) -> dict[date, int]:
    """Per period: ``release`` if it holds ``metric`` of that period, else (``release`` None) the latest
    release of it published at or before ``as_of`` (any time when None); periods without one are absent.
    """
    rows = await conn.fetch(_LATEST_SQL, metric, list(periods), release, as_of)
    return {r["period"]: r["release"] for r in rows}


# $1 metric, $2 breakdown, $3 releases, $4 periods (same length), $5..$7 filters,
# $8 updated after (NULL = every cell).
_CELLS_SQL: Final = f"""
SELECT w.release, c.period, c.district, c.domain, c.provenance, {", ".join(CELL_COLUMNS)}
FROM unnest($3::int[], $4::date[]) AS w(release, period)
JOIN statistics_release_cells c
  ON c.release = w.release AND c.metric = $1 AND c.by_columns = $2 AND c.period = w.period
WHERE ($5::text IS NULL OR c.district = $5) AND ($6::text IS NULL OR c.domain = $6)
  AND ($7::text IS NULL OR c.provenance = $7)
  AND ($8::timestamptz IS NULL OR EXISTS (
      SELECT 1 FROM statistics_releases r
      WHERE r.release <= w.release AND r.published_at > $8
        AND (r.release = (SELECT min(x.release) FROM statistics_release_contents x
                          WHERE x.metric = $1 AND x.period = c.period)
             OR EXISTS (SELECT 1 FROM statistics_revisions v
                        WHERE v.release = r.release AND v.metric = $1 AND v.by_columns = $2
                          AND v.period = c.period AND v.district = c.district
                          AND v.domain = c.domain AND v.provenance = c.provenance))))
ORDER BY c.period, c.ordinal
"""  # noqa: S608 - a fixed column list


@translated(request_data=True)
async def released_cells(
    pool: Pool,
    metric: str,
    by: str,
    chosen: dict[date, int],
    filters: Sequence[str | None],
    updated_after: datetime | None,
) -> list[StatisticsCell]:
    """The stored cells of ``metric``'s table ``by`` of each period from its release in ``chosen``,
    filtered; with ``updated_after``, only cells new or revised in a release published after it."""
    periods = sorted(chosen)
    rows = await pool.fetch(
        _CELLS_SQL,
        metric,
        by,
        [chosen[p] for p in periods],
        periods,
        *filters,
        updated_after,
    )
    return [cell_of(r, r["release"]) for r in rows]


# The cells of one metric's periods in their previous releases, every breakdown: $1 metric, $2 releases,
# $3 periods (same length).
_PREVIOUS_SQL: Final = f"""
SELECT w.release, c.by_columns, c.period, c.district, c.domain, c.provenance, {", ".join(CELL_COLUMNS)}
FROM unnest($2::int[], $3::date[]) AS w(release, period)
JOIN statistics_release_cells c ON c.release = w.release AND c.metric = $1 AND c.period = w.period
"""  # noqa: S608 - a fixed column list


@translated(request_data=False)
async def previous_cells(conn: Connection, metric: str, previous: dict[date, int]) -> list[Record]:
    """Every stored cell of ``metric`` in each period's release of ``previous``."""
    periods = sorted(previous)
    return await conn.fetch(_PREVIOUS_SQL, metric, [previous[p] for p in periods], periods)


@translated(request_data=False)
async def lock_releases(conn: Connection) -> None:
    """Wait for the release lock on ``conn`` (a session lock: the release transaction starts after)."""
    await conn.execute("SELECT pg_advisory_lock($1)", RELEASE_LOCK)


@translated(request_data=False)
async def unlock_releases(conn: Connection) -> None:
    """Give the release lock back."""
    await conn.execute("SELECT pg_advisory_unlock($1)", RELEASE_LOCK)


@translated(request_data=False)
async def next_release(conn: Connection) -> tuple[int, datetime]:
    """The next release number (no gaps) and the time it is published, read under the release lock."""
    row = await conn.fetchrow(
        "SELECT coalesce(max(release), 0) + 1 AS n, clock_timestamp() AS at FROM statistics_releases"
    )
    assert row is not None  # noqa: S101 - an aggregate always returns a row
    return int(row["n"]), row["at"]


@translated(request_data=True)
async def insert_release(
    conn: Connection,
    release: dict[str, Any],
    contents: Iterable[tuple[int, str, date]],
    cells: Iterable[tuple[Any, ...]],
    revisions: Iterable[tuple[Any, ...]],
) -> None:
    """Store a release row, its contents, cells and revisions (inside the caller's transaction)."""
    await conn.execute(
        f"INSERT INTO statistics_releases ({_RELEASE_COLUMNS}) "  # noqa: S608 - fixed column list
        "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
        *release.values(),
    )
    await conn.copy_records_to_table(
        "statistics_release_contents", records=list(contents), columns=["release", "metric", "period"]
    )
    await conn.copy_records_to_table(
        "statistics_release_cells",
        records=list(cells),
        columns=["release", "metric", "by_columns", "period", *_KEY_COLUMNS, "ordinal", *CELL_COLUMNS],
    )
    await conn.copy_records_to_table(
        "statistics_revisions",
        records=list(revisions),
        columns=[
            "release",
            "previous_release",
            "metric",
            "by_columns",
            "period",
            *_KEY_COLUMNS,
            "field",
            "old_value",
            "new_value",
            "cause",
        ],
    )


@translated(request_data=True)
async def get_release(pool: Pool, release: int) -> Record | None:
    """One release row, or None."""
    return await pool.fetchrow(
        f"SELECT {_RELEASE_COLUMNS} FROM statistics_releases WHERE release = $1",  # noqa: S608
        release,
    )


@translated(request_data=True)
async def list_releases(pool: Pool, after: int, limit: int) -> list[Record]:
    """Releases numbered after ``after``, ascending."""
    return await pool.fetch(
        f"SELECT {_RELEASE_COLUMNS} FROM statistics_releases WHERE release > $1 "  # noqa: S608
        "ORDER BY release LIMIT $2",
        after,
        limit,
    )


# $1 period, $2 metric (NULL = any), $3 release (NULL = any), $4 the key after which to start (NULL =
# from the first), $5 limit.
_REVISIONS_SQL: Final = """
SELECT release, previous_release, metric, by_columns, period, district, domain, provenance, field,
       old_value::text AS old_value, new_value::text AS new_value, cause
FROM statistics_revisions
WHERE period = $1 AND ($2::text IS NULL OR metric = $2) AND ($3::int IS NULL OR release = $3)
  AND ($4::text[] IS NULL
       OR (release, metric, by_columns, district, domain, provenance, field)
          > ($4[1]::int, $4[2], $4[3], $4[4], $4[5], $4[6], $4[7]))
ORDER BY release, metric, by_columns, district, domain, provenance, field
LIMIT $5
"""


@translated(request_data=True)
async def list_revisions(
    pool: Pool,
    period: date,
    metric: str | None,
    release: int | None,
    after: Sequence[str] | None,
    limit: int,
) -> list[Record]:
    """Revisions of ``period`` in key order, after the key ``after`` (7 texts) when given."""
    return await pool.fetch(
        _REVISIONS_SQL, period, metric, release, list(after) if after is not None else None, limit
    )


_SOURCE_SQL: Final = """
SELECT provenance, domain,
       count(*) FILTER (WHERE status = 'active') AS active,
       count(*) FILTER (WHERE status = 'inactive') AS inactive,
       count(*) FILTER (WHERE status = 'unregistered') AS unregistered
FROM devices GROUP BY provenance, domain ORDER BY provenance, domain
"""

# $1 month starts, $2 month ends (same length): per month, the districts and the domains of active
# devices registered before the month's end in which no device reported anything that month.
_GAPS_SQL: Final = """
WITH m AS (
    SELECT * FROM unnest($1::timestamptz[], $2::timestamptz[]) AS m(month_start, month_end)
), reg AS (
    SELECT m.month_start, d.device_id, d.district, d.domain,
           EXISTS (SELECT 1 FROM readings_monthly r
                   WHERE r.device_id = d.device_id AND r.bucket = m.month_start AND r.count > 0) AS reported
    FROM m JOIN devices d ON d.status = 'active' AND d.registered_at < m.month_end
)
SELECT month_start, 'district' AS kind, district AS value FROM reg WHERE district IS NOT NULL
GROUP BY month_start, district HAVING NOT bool_or(reported)
UNION ALL
SELECT month_start, 'domain', domain FROM reg GROUP BY month_start, domain HAVING NOT bool_or(reported)
ORDER BY 1, 2, 3
"""


@translated(request_data=False)
async def source_devices(conn: Connection) -> list[Record]:
    """Devices per provenance and domain, by status."""
    return await conn.fetch(_SOURCE_SQL)


@translated(request_data=False)
async def coverage_gaps(conn: Connection, months: Sequence[tuple[datetime, datetime]]) -> list[Record]:
    """(month, 'district' | 'domain', value) without any reporting device."""
    return await conn.fetch(_GAPS_SQL, [m[0] for m in months], [m[1] for m in months])

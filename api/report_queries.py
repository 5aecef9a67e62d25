"""The SQL of the monthly reports (statistics, coverage), with ``$n`` parameters.

The same rules as :mod:`api.queries` hold: rollups only, the only interpolated identifiers are group-by
columns from its fixed mapping, and driver errors leave every function as our classes.

The completeness rule implemented here is specified (and unit-tested) in :mod:`api.statistics`.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Final, TypeAlias

import asyncpg

from api.queries import GroupColumn, Pool, Record, _device_filter, _groups
from api.statistics_cache import StatisticsCache, Tag
from api.storeerrors import translated

if TYPE_CHECKING:
    from asyncpg.pool import PoolConnectionProxy

    Connection: TypeAlias = asyncpg.Connection[Record] | PoolConnectionProxy[Record]

# Registered before the end of the rollup row's month; the month end (date arithmetic) is computed only
# for devices registered after the month started.
_REGISTERED_BY_MONTH_END: Final = """(d.registered_at < r.bucket
     OR d.registered_at < (r.bucket AT TIME ZONE 'UTC' + interval '1 month') AT TIME ZONE 'UTC')"""

# $1 metric, $2 month starts, $3 month ends (arrays, same length), $4 now, $5 the metric's domains
# (empty = every domain), $6..$8 district/domain/provenance filters, $9 first month, $10 end of last.
#
# Each rollup row is read once (obs), and readings_received is summed there, over the rollup rows of
# devices expected in that month. That test runs on every rollup row (120,000 for a year of 10,000
# devices), so its device half (`held`: status, domain, registered before now) is computed
# once per device: the device subquery sits on the nullable side of a LEFT JOIN, where PostgreSQL
# evaluates it while building the join's hash table (a placeholder variable) instead of once per joined
# row; `d.device_id IS NOT NULL` makes the join the inner join it means. Of the month half, the month
# end (date arithmetic) is only computed for devices registered after the month started. Monthly
# buckets are UTC month starts (consumers/rollup.py), so every bucket in [$9, $10) is one of the months.
#
# readings_expected needs every expected device in every month, reported or not (exp): devices are
# first counted per cell, interval and `since` so that a year of 10,000 devices is a few hundred rows,
# not 120,000. `since` is NULL for devices registered before the first month (and before now): they
# are expected in every month and greatest() ignores the NULL, so their share starts at the month
# start, exactly as max(month start, registered_at) does for them.
#
# devices_without_interval: exp counts the devices without an interval that it would expect if they had
# one, silent or not; obs adds those without an interval that reported but exp does not count (inactive,
# of another domain, or registered after the month), so no device is counted twice.
_STATISTICS_SQL: Final = """
WITH months AS (
    SELECT * FROM unnest($2::timestamptz[], $3::timestamptz[]) AS m(month_start, month_end)
), obs AS (
    SELECT r.bucket AS period, {groups}, count(*) AS devices_reporting, sum(r.count) AS readings,
           sum(r.sum) AS total, min(r.min) AS min, max(r.max) AS max, sum(r.flagged) AS flagged,
           sum(r.increase) AS increase,
           -- Reporting devices without an interval that exp below does not count already.
           count(*) FILTER (WHERE d.expected_interval_s IS NULL AND NOT (d.held AND {by_month_end}))
               AS devices_without_interval,
           0::int8 AS devices_expected, 0::float8 AS expected,
           coalesce(sum(r.count) FILTER (
               WHERE d.held AND d.expected_interval_s IS NOT NULL AND {by_month_end}), 0) AS received
    FROM readings_monthly r LEFT JOIN (
        SELECT d.device_id, d.district, d.domain, d.provenance, d.expected_interval_s, d.registered_at,
               (d.status <> 'inactive' AND (cardinality($5::text[]) = 0 OR d.domain = ANY($5::text[]))
                AND d.registered_at < $4) AS held
        FROM devices d
        WHERE {filters}
    ) AS d ON d.device_id = r.device_id
    WHERE r.metric = $1 AND r.bucket >= $9 AND r.bucket < $10 AND r.count > 0 AND d.device_id IS NOT NULL
    GROUP BY 1, 2, 3, 4
), expected_devices AS (
    SELECT {groups}, d.expected_interval_s AS interval_s, count(*) AS n,
           CASE WHEN d.registered_at < least($9, $4) THEN NULL ELSE d.registered_at END AS since
    FROM devices d
    WHERE d.status <> 'inactive' AND (cardinality($5::text[]) = 0 OR d.domain = ANY($5::text[]))
      AND {filters}
    GROUP BY 1, 2, 3, 4, 6
), exp AS (
    SELECT m.month_start AS period, e.district, e.domain, e.provenance, 0::int8, 0::numeric,
           NULL::float8, NULL::float8, NULL::float8, 0::numeric, NULL::float8,
           coalesce(sum(e.n) FILTER (WHERE e.interval_s IS NULL), 0),
           coalesce(sum(e.n) FILTER (WHERE e.interval_s IS NOT NULL), 0),
           coalesce(sum(e.n * (greatest(0, date_part('epoch', least(m.month_end, $4)
                                                              - greatest(m.month_start, e.since)))
                               / e.interval_s)) FILTER (WHERE e.interval_s IS NOT NULL), 0)::float8,
           0::numeric
    FROM months m JOIN expected_devices e ON e.since IS NULL OR e.since < least(m.month_end, $4)
    GROUP BY 1, 2, 3, 4
)
SELECT period, district, domain, provenance,
       sum(devices_reporting)::int8 AS devices_reporting, sum(readings)::int8 AS readings,
       sum(total) AS total, min(min) AS min, max(max) AS max, sum(flagged)::int8 AS flagged,
       sum(increase) AS increase, sum(devices_without_interval)::int8 AS devices_without_interval,
       sum(devices_expected)::int8 AS devices_expected, sum(expected) AS expected,
       sum(received)::int8 AS received
FROM (SELECT * FROM obs UNION ALL SELECT * FROM exp) AS x
GROUP BY 1, 2, 3, 4
ORDER BY 1, coalesce(district, ''), coalesce(domain, ''), coalesce(provenance, '')
"""


# The versions of closed months and of the device registry, read in the statistics' snapshot.
_VERSIONS_SQL: Final = """
SELECT m.month, coalesce(sum(v.version), 0)::int8 AS version,
       (SELECT version FROM device_registry_version) AS devices
FROM unnest($1::timestamptz[]) AS m(month) LEFT JOIN rollup_versions v ON v.month = m.month
GROUP BY m.month
"""


def _statistics_sql(group_by: Sequence[GroupColumn]) -> str:
    return _STATISTICS_SQL.format(
        groups=_groups(group_by), filters=_device_filter(6), by_month_end=_REGISTERED_BY_MONTH_END
    )


@translated(request_data=True)
async def statistics_rows(
    conn: Connection,
    metric: str,
    months: Sequence[tuple[datetime, datetime]],
    now: datetime,
    metric_domains: Sequence[str],
    group_by: Sequence[GroupColumn],
) -> list[Record]:
    """The rows :func:`monthly_statistics` returns for the whole table (no filter, no cache), read on
    ``conn`` inside the caller's transaction: a release reads all its tables in one snapshot."""
    await conn.execute("SET LOCAL plan_cache_mode = force_custom_plan")
    return await conn.fetch(
        _statistics_sql(group_by),
        metric,
        [m[0] for m in months],
        [m[1] for m in months],
        now,
        list(metric_domains),
        None,
        None,
        None,
        months[0][0],
        months[-1][1],
    )


@translated(request_data=True)
async def monthly_statistics(
    pool: Pool,
    metric: str,
    months: Sequence[tuple[datetime, datetime]],
    now: datetime,
    metric_domains: Sequence[str],
    group_by: Sequence[GroupColumn],
    filters: Sequence[str | None],
    cache: StatisticsCache | None = None,
) -> list[Record]:
    """One row per (month, group): reporting devices, readings, figures, and completeness inputs.

    With ``cache``, closed months (ended by ``now``) are served from it while their versions hold, and
    only the other months are queried; the rows are the same either way.
    """
    sql = _statistics_sql(group_by)
    key = (metric, tuple(metric_domains), tuple(group_by), tuple(filters))
    kept: dict[datetime, Sequence[Record]] = {}
    fresh: dict[datetime, list[Record]] = {}
    # Repeatable read: the versions and the rows they tag come from one snapshot.
    async with pool.acquire() as conn, conn.transaction(readonly=True, isolation="repeatable_read"):
        tags: dict[datetime, Tag] = {}
        closed = [start for start, end in months if end <= now] if cache is not None and cache.enabled else []
        if cache is not None and closed:
            for r in await conn.fetch(_VERSIONS_SQL, closed):
                tags[r["month"]] = (r["version"], r["devices"])
            for month in closed:
                rows = cache.get(key, month, tags[month])
                if rows is not None:
                    kept[month] = rows
        missing = [m for m in months if m[0] not in kept]
        if missing:
            # After five runs of a cached statement PostgreSQL may switch to a generic plan; without
            # the values it estimates a few rollup rows and sorts 120,000 of them (2x slower).
            await conn.execute("SET LOCAL plan_cache_mode = force_custom_plan")
            wanted = {m[0] for m in missing}
            for r in await conn.fetch(
                sql,
                metric,
                [m[0] for m in missing],
                [m[1] for m in missing],
                now,
                list(metric_domains),
                *filters,
                missing[0][0],
                missing[-1][1],
            ):
                # Months kept in between the missing ones come back too; the kept rows stand for them.
                if r["period"] in wanted:
                    fresh.setdefault(r["period"], []).append(r)
    if cache is not None:
        for month, tag in tags.items():
            if month not in kept:
                cache.put(key, month, tag, fresh.get(month, []))
    out: list[Record] = []
    for start, _ in months:
        out.extend(kept[start] if start in kept else fresh.get(start, ()))
    return out


@translated(request_data=False)
async def first_month(pool: Pool) -> datetime | None:
    """The first month with readings (the monthly rollups' first bucket), or None when there are none."""
    first: datetime | None = await pool.fetchval("SELECT min(bucket) FROM readings_monthly")
    return first


# $1 month start, $2 month end, $3 now, $4 domain (NULL = every domain).
_COVERAGE_SQL: Final = """
WITH got AS (
    SELECT device_id, sum(count) AS readings, array_agg(metric ORDER BY metric) AS metrics
    FROM readings_monthly WHERE bucket = $1::timestamptz AND count > 0 GROUP BY device_id
), dev AS (
    SELECT d.device_id, d.district, d.domain, d.expected_interval_s, d.registered_at,
           (d.status = 'active' AND d.registered_at < least($2::timestamptz, $3::timestamptz)) AS registered,
           coalesce(g.readings, 0) AS readings, coalesce(g.metrics, '{}') AS metrics
    FROM devices d LEFT JOIN got g ON g.device_id = d.device_id
    WHERE ($4::text IS NULL OR d.domain = $4)
      AND ((d.status = 'active' AND d.registered_at < least($2::timestamptz, $3::timestamptz))
           OR g.readings > 0)
), reported AS (
    SELECT dev.district, array_agg(DISTINCT m ORDER BY m) AS metrics
    FROM dev CROSS JOIN LATERAL unnest(dev.metrics) AS m GROUP BY dev.district
)
SELECT dev.district,
       count(*) FILTER (WHERE registered) AS devices_registered,
       count(*) FILTER (WHERE registered AND readings > 0) AS devices_reporting,
       count(*) FILTER (WHERE NOT registered) AS devices_unregistered_reporting,
       count(*) FILTER (WHERE registered AND expected_interval_s IS NULL) AS devices_without_interval,
       coalesce(sum(readings) FILTER (WHERE registered AND expected_interval_s IS NOT NULL), 0)::int8
           AS received,
       coalesce(sum(greatest(0, date_part('epoch', least($2::timestamptz, $3::timestamptz)
                                                    - greatest($1::timestamptz, registered_at)))
                    / expected_interval_s * greatest(cardinality(dev.metrics), 1))
                FILTER (WHERE registered AND expected_interval_s IS NOT NULL), 0)::float8 AS expected,
       coalesce(array_agg(DISTINCT dev.domain) FILTER (WHERE registered), '{}') AS domains,
       coalesce(min(reported.metrics), '{}') AS metrics_reported
FROM dev LEFT JOIN reported ON reported.district IS NOT DISTINCT FROM dev.district
GROUP BY dev.district
ORDER BY dev.district NULLS LAST
"""


@translated(request_data=True)
async def coverage(
    pool: Pool, month_start: datetime, month_end: datetime, now: datetime, domain: str | None
) -> list[Record]:
    """Per district: registered, reporting and unregistered devices, completeness inputs, metrics."""
    return await pool.fetch(_COVERAGE_SQL, month_start, month_end, now, domain)

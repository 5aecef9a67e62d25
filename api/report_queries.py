"""The SQL of the monthly reports (statistics, coverage) and of the lag view, with ``$n`` parameters.

Kept apart from :mod:`api.queries` only for size; the same rules hold: rollups only, and the only
interpolated identifiers are group-by columns from the fixed mapping of :mod:`api.queries`.

The completeness rule implemented here is specified (and unit-tested) in :mod:`api.statistics`.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Final

from api.queries import GroupColumn, Pool, Record, _device_filter, _groups

# $1 metric, $2 month starts, $3 month ends (arrays, same length), $4 now, $5 the metric's domains
# (empty = every domain), $6..$8 district/domain/provenance filters, $9 first month, $10 end of last.
_STATISTICS_SQL: Final = """
WITH months AS (
    SELECT * FROM unnest($2::timestamptz[], $3::timestamptz[]) AS m(month_start, month_end)
), monthly AS (
    SELECT device_id, bucket, count, sum, min, max, flagged, increase FROM readings_monthly
    WHERE metric = $1 AND bucket >= $9 AND bucket < $10 AND count > 0
), obs AS (
    SELECT r.bucket AS period, {groups}, count(*) AS devices_reporting, sum(r.count) AS readings,
           sum(r.sum) AS total, min(r.min) AS min, max(r.max) AS max, sum(r.flagged) AS flagged,
           sum(r.increase) AS increase,
           count(*) FILTER (WHERE d.expected_interval_s IS NULL) AS devices_without_interval,
           0::int8 AS devices_expected, 0::float8 AS expected, 0::numeric AS received
    FROM monthly r JOIN devices d ON d.device_id = r.device_id
    WHERE {filters}
    GROUP BY 1, 2, 3, 4
), exp AS (
    SELECT m.month_start AS period, {groups}, 0::int8, 0::numeric, NULL::float8, NULL::float8,
           NULL::float8, 0::numeric, NULL::float8, 0::int8, count(*),
           sum(greatest(0, date_part('epoch', least(m.month_end, $4)
                                              - greatest(m.month_start, d.registered_at)))
               / d.expected_interval_s)::float8,
           coalesce(sum(r.count), 0)
    FROM months m
    JOIN devices d ON d.registered_at < least(m.month_end, $4) AND d.expected_interval_s IS NOT NULL
                  AND d.status <> 'inactive' AND (cardinality($5::text[]) = 0 OR d.domain = ANY($5::text[]))
    LEFT JOIN monthly r ON r.device_id = d.device_id AND r.bucket = m.month_start
    WHERE {filters}
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


async def monthly_statistics(
    pool: Pool,
    metric: str,
    months: Sequence[tuple[datetime, datetime]],
    now: datetime,
    metric_domains: Sequence[str],
    group_by: Sequence[GroupColumn],
    filters: Sequence[str | None],
) -> list[Record]:
    """One row per (month, group): reporting devices, readings, figures, and completeness inputs."""
    sql = _STATISTICS_SQL.format(groups=_groups(group_by), filters=_device_filter(6))
    return await pool.fetch(
        sql,
        metric,
        [m[0] for m in months],
        [m[1] for m in months],
        now,
        list(metric_domains),
        *filters,
        months[0][0],
        months[-1][1],
    )


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


async def coverage(
    pool: Pool, month_start: datetime, month_end: datetime, now: datetime, domain: str | None
) -> list[Record]:
    """Per district: registered, reporting and unregistered devices, completeness inputs, metrics."""
    return await pool.fetch(_COVERAGE_SQL, month_start, month_end, now, domain)


async def stored_offsets(pool: Pool) -> list[Record]:
    """Every consumer group's stored next offset per topic and partition."""
    return await pool.fetch(
        "SELECT group_id, topic, partition, next_offset, applied_at FROM consumer_offsets "
        "ORDER BY group_id, topic, partition"
    )

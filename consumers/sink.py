"""All SQL of the consumer side: apply a batch in one transaction, read stored offsets, retention.

One batch = one transaction that (1) locks the batch's partitions and stages the batch's readings
(binary COPY into a temporary table of the session), (2) inserts the raw readings, ignoring those
stored already, (3) folds only the rows actually inserted into the three rollup tables, including
reset-aware counter increases and the correction of the reading that follows a late one, (4) registers
unknown devices and moves first/last seen, and (5) stores the partitions' next offsets. Steps 2-5 are
one statement of data-modifying CTEs, so they see one snapshot taken after the lock. When the readings
are assumed new, step 2 is first tried as a plain insertion under a savepoint (cheaper than one that
looks for conflicts); a reading stored already makes it fail and the statement runs again the general
way."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, Final

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from consumers.applied import Applied
from consumers.batch import Partition, PreparedBatch
from consumers.rollup import Level
from core.types import FLAGGED_MASK, ROLLUP_TABLES

log = logging.getLogger(__name__)

Conn = asyncpg.Connection | PoolConnectionProxy
"""A connection, direct or from a pool."""

_WIDTH: Final[dict[Level, str]] = {"hourly": "1 hour", "daily": "1 day", "monthly": "1 month"}

# The partitions of a batch are locked in sorted order, so two consumers briefly owning the same
# partition during a rebalance apply their batches one after the other and never interleave.
_LOCK_SQL: Final = """
SELECT to_regclass('pg_temp.cityingest_batch') IS NOT NULL AS staging_exists
FROM (SELECT count(pg_advisory_xact_lock(hashtextextended(s.topic || '/' || s.partition::text, 0)))
      FROM (SELECT * FROM unnest($1::text[], $2::int4[]) AS u(topic, partition) ORDER BY 1, 2) AS s
) AS locked
"""

# The batch's readings reach the server by binary COPY into this per-session table: sending them as
# query parameters (arrays) costs the consumer several times more CPU per reading.
_STAGE: Final = "cityingest_batch"
_STAGE_SQL: Final = """
CREATE TEMP TABLE cityingest_batch (
    device_id text NOT NULL,
    metric    text NOT NULL,
    ts_us     int8 NOT NULL,
    value     double precision NOT NULL,
    flags     smallint NOT NULL
) ON COMMIT DELETE ROWS
"""
_UNSTAGE_SQL: Final = "TRUNCATE pg_temp.cityingest_batch"

# Hourly contributions of the new readings, aggregated once; the daily and monthly ones are folded
# from them (hours nest in UTC days and months), which aggregates far fewer rows than the readings.
_HOURLY_CTE: Final = """
hagg AS (
    SELECT device_id, metric, time_bucket('1 hour', ts) AS bucket, count(*)::int4 AS count,
           sum(value) AS sum, sum(value * value) AS sum_sq, min(value) AS min, max(value) AS max,
           (count(*) FILTER (WHERE flags & $12 <> 0))::int4 AS flagged,
           min(ts) AS first_ts, first(value, ts) AS first_value, max(ts) AS last_ts,
           last(value, ts) AS last_value, sum(inc) AS increase
    FROM fresh
    GROUP BY 1, 2, 3
)"""

_FROM_HOURLY: Final = """
    SELECT device_id, metric, time_bucket('{width}', bucket) AS bucket, sum(count) AS count,
           sum(sum) AS sum, sum(sum_sq) AS sum_sq, min(min) AS min, max(max) AS max,
           sum(flagged) AS flagged, min(first_ts) AS first_ts, first(first_value, first_ts) AS first_value,
           max(last_ts) AS last_ts, last(last_value, last_ts) AS last_value, sum(increase) AS increase
    FROM hagg
    GROUP BY 1, 2, 3"""

_ROLLUP_CTE: Final = """
{level} AS (
    INSERT INTO {table} AS t (device_id, metric, bucket, count, sum, sum_sq, min, max, flagged,
                              first_ts, first_value, last_ts, last_value, increase)
    {select}
    ORDER BY 1, 2, 3
    ON CONFLICT (device_id, metric, bucket) DO UPDATE SET
        count = t.count + EXCLUDED.count,
        sum = t.sum + EXCLUDED.sum,
        sum_sq = t.sum_sq + EXCLUDED.sum_sq,
        min = LEAST(t.min, EXCLUDED.min),
        max = GREATEST(t.max, EXCLUDED.max),
        flagged = t.flagged + EXCLUDED.flagged,
        first_ts = LEAST(t.first_ts, EXCLUDED.first_ts),
        first_value = CASE WHEN EXCLUDED.first_ts < t.first_ts THEN EXCLUDED.first_value
                           ELSE t.first_value END,
        last_ts = GREATEST(t.last_ts, EXCLUDED.last_ts),
        last_value = CASE WHEN EXCLUDED.last_ts > t.last_ts THEN EXCLUDED.last_value ELSE t.last_value END,
        increase = CASE WHEN t.increase IS NULL AND EXCLUDED.increase IS NULL THEN NULL
                        ELSE coalesce(t.increase, 0) + coalesce(EXCLUDED.increase, 0) END
)"""

_FIX_CTE: Final = """
{level} AS (
    UPDATE {table} AS t SET increase = coalesce(t.increase, 0) + x.delta
    FROM (SELECT device_id, metric, time_bucket('{width}', ts) AS bucket, sum(delta) AS delta
          FROM fixes GROUP BY 1, 2, 3) AS x
    WHERE t.device_id = x.device_id AND t.metric = x.metric AND t.bucket = x.bucket
)"""


def _ctes(template: str) -> str:
    # Table names and bucket widths are constants of this module, never data.
    return ",".join(
        template.format(level=level, table=ROLLUP_TABLES[level], width=_WIDTH[level]) for level in _WIDTH
    )


def _rollup_ctes() -> str:
    return ",".join(
        _ROLLUP_CTE.format(
            level=level,
            table=ROLLUP_TABLES[level],
            select="SELECT * FROM hagg" if level == "hourly" else _FROM_HOURLY.format(width=_WIDTH[level]),
        )
        for level in _WIDTH
    )


# The readings come from the staging table; $1 counter metrics, $2..$6 devices, $7..$11 offsets,
# $12 flagged mask.
_SRC: Final = """
WITH src AS (
    SELECT device_id, metric, to_timestamp(0) + ts_us * interval '1 microsecond' AS ts, value, flags
    FROM pg_temp.cityingest_batch
),"""

# `added`: the readings this statement adds to the store. Inserting in key order keeps consecutive
# insertions on the same pages of the unique index.
_ADDED: Final = """
added AS (
    INSERT INTO readings (device_id, metric, ts, value, flags)
    SELECT device_id, metric, ts, value, flags FROM src ORDER BY device_id, metric, ts{on_conflict}
    RETURNING device_id, metric, ts, value, flags
),"""

_FOLD: Final = "".join(
    (
        """
cnew AS (
    SELECT * FROM added WHERE metric = ANY($1::text[])
), cspan AS (
    SELECT device_id, metric, min(ts) AS lo, max(ts) AS hi FROM cnew GROUP BY device_id, metric
), clast AS (
    -- The latest stored reading of each series (this statement's snapshot does not include the new
    -- rows). Usually it precedes every new reading: then it is the only neighbour that matters.
    SELECT c.device_id, c.metric, c.lo, c.hi, l.ts AS last_ts, l.value AS last_value
    FROM cspan c LEFT JOIN LATERAL (
        SELECT r.ts, r.value FROM readings r
        WHERE r.device_id = c.device_id AND r.metric = c.metric
        ORDER BY r.ts DESC LIMIT 1
    ) AS l ON true
), cwin AS (
    -- Series with late new readings (stored readings after the earliest new one): the stored reading
    -- before the earliest new one and the one after the latest bound the stored readings that matter.
    SELECT c.device_id, c.metric,
        coalesce((SELECT r.ts FROM readings r
                  WHERE r.device_id = c.device_id AND r.metric = c.metric AND r.ts < c.lo
                  ORDER BY r.ts DESC LIMIT 1), c.lo) AS lo,
        coalesce((SELECT r.ts FROM readings r
                  WHERE r.device_id = c.device_id AND r.metric = c.metric AND r.ts > c.hi
                  ORDER BY r.ts LIMIT 1), c.hi) AS hi
    FROM clast c WHERE c.last_ts > c.lo
), cold AS (
    SELECT device_id, metric, last_ts AS ts, last_value AS value FROM clast WHERE last_ts < lo
    UNION ALL
    SELECT w.device_id, w.metric, r.ts, r.value
    FROM cwin w CROSS JOIN LATERAL (
        -- OFFSET 0 keeps this an index range scan per series (as a join the planner, blind to the
        -- CTE's size, may scan the whole chunk).
        SELECT r.ts, r.value FROM readings r
        WHERE r.device_id = w.device_id AND r.metric = w.metric AND r.ts BETWEEN w.lo AND w.hi
        OFFSET 0
    ) AS r
), cser AS (
    SELECT device_id, metric, ts, value, flags, true AS is_new FROM cnew
    UNION ALL
    SELECT device_id, metric, ts, value, 0::int2, false FROM cold
), clag AS (
    SELECT cser.*, lag(value) OVER w AS prev_value, lag(is_new) OVER w AS prev_is_new
    FROM cser WINDOW w AS (PARTITION BY device_id, metric ORDER BY ts)
), coldlag AS (
    SELECT device_id, metric, ts, lag(value) OVER (PARTITION BY device_id, metric ORDER BY ts) AS prev_old
    FROM cold
), fresh AS (
    SELECT device_id, metric, ts, value, flags, NULL::float8 AS inc FROM added
    WHERE NOT (metric = ANY($1::text[]))
    UNION ALL
    SELECT device_id, metric, ts, value, flags, counter_increase(prev_value, value) FROM clag WHERE is_new
), fixes AS (
    -- Stored readings whose predecessor is now a new (late) reading: their increase changes.
    SELECT c.device_id, c.metric, c.ts,
           counter_increase(c.prev_value, c.value) - counter_increase(o.prev_old, c.value) AS delta
    FROM clag c JOIN coldlag o USING (device_id, metric, ts)
    WHERE NOT c.is_new AND c.prev_is_new
),""",
        _HOURLY_CTE,
        ",",
        _rollup_ctes(),
        """,
devs AS (
    INSERT INTO devices AS d (device_id, domain, first_seen, last_seen, last_reading_at)
    SELECT u.device_id, u.domain,
           to_timestamp(0) + u.first_us * interval '1 microsecond',
           to_timestamp(0) + u.last_us * interval '1 microsecond',
           to_timestamp(0) + u.reading_us * interval '1 microsecond'
    FROM unnest($2::text[], $3::text[], $4::int8[], $5::int8[], $6::int8[])
        AS u(device_id, domain, first_us, last_us, reading_us)
    ORDER BY u.device_id
    ON CONFLICT (device_id) DO UPDATE SET
        first_seen = LEAST(d.first_seen, EXCLUDED.first_seen),
        last_seen = GREATEST(d.last_seen, EXCLUDED.last_seen),
        last_reading_at = GREATEST(d.last_reading_at, EXCLUDED.last_reading_at)
    WHERE (LEAST(d.first_seen, EXCLUDED.first_seen), GREATEST(d.last_seen, EXCLUDED.last_seen),
           GREATEST(d.last_reading_at, EXCLUDED.last_reading_at))
          IS DISTINCT FROM (d.first_seen, d.last_seen, d.last_reading_at)
), vers AS (
    -- The months this batch changes, for the API's statistics of closed months (migration 0009):
    -- every month from the earliest to the latest touched (a superset costs nothing but a recount).
    INSERT INTO rollup_versions AS v (month, topic, partition)
    SELECT m.month AT TIME ZONE 'UTC', u.topic, u.partition
    FROM (SELECT min(b) AS lo, max(b) AS hi
          FROM (SELECT bucket AS b FROM hagg UNION ALL SELECT ts FROM fixes) AS s) AS r
    CROSS JOIN LATERAL generate_series(time_bucket('1 month', r.lo) AT TIME ZONE 'UTC',
                                       time_bucket('1 month', r.hi) AT TIME ZONE 'UTC',
                                       interval '1 month') AS m(month)
    CROSS JOIN unnest($8::text[], $9::int4[]) AS u(topic, partition)
    ON CONFLICT (month, topic, partition) DO UPDATE SET version = v.version + 1
), offs AS (
    INSERT INTO consumer_offsets AS o (group_id, topic, partition, next_offset, consumer_id, applied_at)
    SELECT $7, u.topic, u.partition, u.next_offset, $11, now()
    FROM unnest($8::text[], $9::int4[], $10::int8[]) AS u(topic, partition, next_offset)
    ON CONFLICT (group_id, topic, partition) DO UPDATE SET
        -- Never backwards: a consumer finishing a batch after a rebalance must not undo the new owner.
        next_offset = GREATEST(o.next_offset, EXCLUDED.next_offset),
        consumer_id = EXCLUDED.consumer_id,
        applied_at = EXCLUDED.applied_at
)
SELECT (SELECT count(*) FROM fresh) AS inserted,
       (SELECT array_agg(device_id) FROM fixes) AS fix_devices,
       (SELECT array_agg(metric) FROM fixes) AS fix_metrics,
       (SELECT array_agg(ts) FROM fixes) AS fix_ts,
       (SELECT array_agg(delta) FROM fixes) AS fix_deltas
""",
    )
)

_APPLY_SQL: Final = _SRC + _ADDED.format(on_conflict="\n    ON CONFLICT DO NOTHING") + _FOLD
"""Apply the staged batch whatever the store holds: readings stored already are ignored."""
_APPLY_NEW_SQL: Final = _SRC + _ADDED.format(on_conflict="") + _FOLD
"""Apply the staged batch if none of its readings is stored yet, else fail with a unique violation.

A plain insertion costs the server less than one that looks for conflicts first, and it fails early:
the insertion runs to completion before any rollup is computed."""

_FIX_SQL: Final = "".join(
    (
        """
WITH fixes AS (
    SELECT * FROM unnest($1::text[], $2::text[], $3::timestamptz[], $4::float8[])
        AS f(device_id, metric, ts, delta)
),""",
        _ctes(_FIX_CTE),
        "\nSELECT 1",
    )
)

_OFFSETS_SQL: Final = """
SELECT partition, next_offset FROM consumer_offsets
WHERE group_id = $1 AND topic = $2 AND partition = ANY($3::int4[])
"""

_RETENTION_SQL: Final = """
SELECT count(*) FROM drop_chunks('readings', older_than => now() - make_interval(secs => $1))
"""
_POLICY_SQL: Final = """
SELECT coalesce((SELECT enabled FROM store_features WHERE name = 'retention_policy'), false)
"""
_RETENTION_LOCK: Final = 0x0C171E58  # one retention run at a time across all consumers

_READY_SQL: Final = "SELECT count(*) FROM consumer_offsets WHERE false"


def _batch_args(batch: PreparedBatch, counters: Sequence[str], group_id: str, consumer_id: str) -> list[Any]:
    devs = sorted(batch.devices.items())
    parts = batch.partitions
    return [
        list(counters),
        [d for d, _ in devs],
        [s.domain for _, s in devs],
        [s.first_received_us for _, s in devs],
        [s.last_received_us for _, s in devs],
        [s.last_reading_us for _, s in devs],
        group_id,
        [t for t, _ in parts],
        [p for _, p in parts],
        [batch.offsets[tp] for tp in parts],
        consumer_id,
        FLAGGED_MASK,
    ]


async def apply_batch(
    conn: Conn,
    batch: PreparedBatch,
    *,
    counters: Sequence[str],
    group_id: str,
    consumer_id: str,
    assume_new: bool = False,
) -> Applied:
    """Apply ``batch`` in one transaction on ``conn``: readings, rollups, devices and offsets, or nothing.

    ``assume_new``: first try a plain insertion of the readings, cheaper than one that ignores stored
    ones; if any is stored already it fails, is rolled back and the batch is applied the general way.
    """
    parts = batch.partitions
    args = _batch_args(batch, counters, group_id, consumer_id)
    nested = conn.is_in_transaction()
    row: asyncpg.Record | None = None
    async with conn.transaction():
        if not await conn.fetchval(_LOCK_SQL, [t for t, _ in parts], [p for _, p in parts]):
            await conn.execute(_STAGE_SQL)
        if batch.rows:
            # Before any savepoint: the staged readings serve both forms of the statement.
            await conn.copy_records_to_table(_STAGE, records=batch.rows, schema_name="pg_temp")
        if assume_new and batch.rows:
            try:
                async with conn.transaction():  # a savepoint
                    row = await conn.fetchrow(_APPLY_NEW_SQL, *args)
            except asyncpg.UniqueViolationError:
                log.debug("a reading of the batch is stored already; applying it the general way")
        if row is None:
            row = await conn.fetchrow(_APPLY_SQL, *args)
        if row is None:  # pragma: no cover - the statement always returns one row
            raise RuntimeError("the apply statement returned no row")
        fix_devices: list[str] | None = row["fix_devices"]
        if fix_devices:
            await conn.execute(_FIX_SQL, fix_devices, row["fix_metrics"], row["fix_ts"], row["fix_deltas"])
        if nested and batch.rows:
            # Inside the caller's transaction the staged rows would outlive this batch.
            await conn.execute(_UNSTAGE_SQL)
    inserted = int(row["inserted"])
    return Applied(inserted, batch.readings - inserted, len(fix_devices or ()), len(batch.rows) - inserted)


async def stored_offsets(conn: Conn, group_id: str, topic: str, partitions: Sequence[int]) -> dict[int, int]:
    """The next offset to read of each of ``partitions`` that the store has one for."""
    rows = await conn.fetch(_OFFSETS_SQL, group_id, topic, list(partitions))
    return {int(r["partition"]): int(r["next_offset"]) for r in rows}


async def drop_old_readings(conn: Conn, older_than_s: float) -> int | None:
    """Drop raw-reading chunks older than ``older_than_s``.

    None when this consumer must not: another consumer is doing it right now, or TimescaleDB's own
    retention policy is in force (community edition, see migrations/0008_storage_policies.sql).
    """
    async with conn.transaction():
        if not await conn.fetchval("SELECT pg_try_advisory_xact_lock($1)", _RETENTION_LOCK):
            return None
        if await conn.fetchval(_POLICY_SQL):
            return None
        return int(await conn.fetchval(_RETENTION_SQL, older_than_s))


async def check_ready(conn: Conn) -> None:
    """Raise unless the store answers and has the consumer's schema."""
    await conn.fetchval(_READY_SQL)


__all__ = [
    "Applied",
    "Partition",
    "apply_batch",
    "check_ready",
    "drop_old_readings",
    "stored_offsets",
]

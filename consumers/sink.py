"""All SQL of the consumer side: apply a batch in one transaction, read stored offsets, retention.

The statements of a batch are in ``consumers/applysql.py``: one batch is one transaction that stages
its readings and then, in one statement, stores them, folds them into the rollups, registers devices
and stores the partitions' next offsets."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, Final

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from consumers.applied import Applied
from consumers.applysql import APPLY_NEW_SQL, APPLY_SQL, FIX_SQL, LOCK_SQL, STAGE, STAGE_SQL, UNSTAGE_SQL
from consumers.batch import Partition, PreparedBatch
from core.types import FLAGGED_MASK

log = logging.getLogger(__name__)

Conn = asyncpg.Connection | PoolConnectionProxy
"""A connection, direct or from a pool."""

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
        if not await conn.fetchval(LOCK_SQL, [t for t, _ in parts], [p for _, p in parts]):
            await conn.execute(STAGE_SQL)
        if batch.rows:
            # Before any savepoint: the staged readings serve both forms of the statement.
            await conn.copy_records_to_table(STAGE, records=batch.rows, schema_name="pg_temp")
        if assume_new and batch.rows:
            try:
                async with conn.transaction():  # a savepoint
                    row = await conn.fetchrow(APPLY_NEW_SQL, *args)
            except asyncpg.UniqueViolationError:
                log.debug("a reading of the batch is stored already; applying it the general way")
        if row is None:
            row = await conn.fetchrow(APPLY_SQL, *args)
        if row is None:  # pragma: no cover - the statement always returns one row
            raise RuntimeError("the apply statement returned no row")
        fix_devices: list[str] | None = row["fix_devices"]
        if fix_devices:
            await conn.execute(FIX_SQL, fix_devices, row["fix_metrics"], row["fix_ts"], row["fix_deltas"])
        if nested and batch.rows:
            # Inside the caller's transaction the staged rows would outlive this batch.
            await conn.execute(UNSTAGE_SQL)
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


__all__ = [
    "Applied",
    "Partition",
    "apply_batch",
    "drop_old_readings",
    "stored_offsets",
]

"""The SQL of the operators' view: the store's liveness, stored offsets, unregistered devices.

``$n`` parameters only, and driver errors leave every function as our classes (:mod:`api.storeerrors`).
"""

from __future__ import annotations

from typing import Final

from api.queries import Pool, Record
from api.storeerrors import translated


@translated(request_data=False)
async def ping(pool: Pool) -> None:
    """One round trip to the store (readiness)."""
    await pool.fetchval("SELECT 1")


@translated(request_data=False)
async def stored_offsets(pool: Pool) -> list[Record]:
    """Every consumer group's stored next offset per topic and partition."""
    return await pool.fetch(
        "SELECT group_id, topic, partition, next_offset, applied_at FROM consumer_offsets "
        "ORDER BY group_id, topic, partition"
    )


# Devices the consumer inserted on their first reading and nobody registered since (the operators'
# overview): how many, and the newest few by first reading.
_UNREGISTERED_COUNT_SQL: Final = "SELECT count(*) FROM devices WHERE status = 'unregistered'"
_UNREGISTERED_SQL: Final = """
SELECT device_id, domain, first_seen, last_seen FROM devices WHERE status = 'unregistered'
ORDER BY first_seen DESC NULLS LAST, device_id LIMIT $1"""


@translated(request_data=False)
async def unregistered_devices(pool: Pool, limit: int) -> tuple[int, list[Record]]:
    """The number of unregistered devices and the ``limit`` most recently first seen."""
    async with pool.acquire() as conn:
        count = int(await conn.fetchval(_UNREGISTERED_COUNT_SQL))
        rows = await conn.fetch(_UNREGISTERED_SQL, limit) if limit > 0 else []
    return count, rows

"""Consumer lag as the dev stack sees it: real Kafka end offsets minus the offsets stored in the database.

The end offsets come from :func:`api.ops.kafka.end_offsets` (:func:`core.offsets.real_end_offsets`), not
from ListOffsets alone: Tansu under-reports those after batched produces, and a drain that trusted them
would stop before the consumers applied the last batches and then discard them with the broker.
"""

from __future__ import annotations

import asyncpg

from api.ops.kafka import end_offsets
from devstack.process import ServiceError

END_OFFSETS_TIMEOUT_S = 10.0


async def total_lag(bootstrap: str, dsn: str, topic: str, group: str) -> int:
    """Records in ``topic`` that ``group`` has not applied yet (never negative per partition).

    A partition whose real end could not be settled in time counts at least 1: a drain keeps waiting.
    """
    found = await end_offsets(bootstrap, [topic], END_OFFSETS_TIMEOUT_S)
    if found is None:
        raise ServiceError(f"cannot read end offsets of {topic} from {bootstrap} (see the log)")
    try:
        conn = await asyncpg.connect(dsn)
    except (OSError, asyncpg.PostgresError) as exc:
        raise ServiceError(f"cannot read stored offsets: {exc}") from exc
    try:
        rows = await conn.fetch(
            "SELECT partition, next_offset FROM consumer_offsets WHERE group_id = $1 AND topic = $2",
            group,
            topic,
        )
    finally:
        await conn.close()
    stored = {r["partition"]: r["next_offset"] for r in rows}
    return sum(
        max(int(key in found.unsettled), end - stored.get(key[1], 0)) for key, end in found.ends.items()
    )


async def forget_offsets(dsn: str, topic: str) -> None:
    """Drop stored offsets of ``topic``: a fresh in-memory broker starts its offsets at zero again."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("DELETE FROM consumer_offsets WHERE topic = $1", topic)
    finally:
        await conn.close()

"""Consumer lag as the dev stack sees it: Kafka end offsets minus the offsets stored in the database."""

from __future__ import annotations

import asyncpg
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from devstack.process import ServiceError


async def total_lag(
    bootstrap: str, dsn: str, topic: str = "readings", group: str = "cityingest-consumers"
) -> int:
    """Records in ``topic`` that ``group`` has not applied yet (never negative per partition)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    try:
        await consumer.start()
        partitions = consumer.partitions_for_topic(topic) or set()
        ends = await consumer.end_offsets([TopicPartition(topic, p) for p in partitions])
    except KafkaError as exc:
        raise ServiceError(f"cannot read end offsets of {topic}: {exc!r}") from exc
    finally:
        await consumer.stop()
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
    return sum(max(0, end - stored.get(tp.partition, 0)) for tp, end in ends.items())


async def forget_offsets(dsn: str, topic: str = "readings") -> None:
    """Drop stored offsets of ``topic``: a fresh in-memory broker starts its offsets at zero again."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("DELETE FROM consumer_offsets WHERE topic = $1", topic)
    finally:
        await conn.close()

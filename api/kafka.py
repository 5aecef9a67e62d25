"""Kafka end offsets for the lag view, bounded by a timeout: Kafka being down never fails a request."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

log = logging.getLogger(__name__)


async def end_offsets(
    bootstrap: str, topics: Iterable[str], timeout_s: float
) -> dict[tuple[str, int], int] | None:
    """High watermark of every partition of ``topics``, or None if Kafka does not answer in time."""
    wanted = sorted(set(topics))
    if not wanted:
        return {}
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        request_timeout_ms=max(1000, int(timeout_s * 1000)),
    )
    try:
        async with asyncio.timeout(timeout_s):
            await consumer.start()
            partitions = [
                TopicPartition(topic, p)
                for topic in wanted
                for p in sorted(consumer.partitions_for_topic(topic) or ())
            ]
            if not partitions:
                return {}
            ends = await consumer.end_offsets(partitions)
    except (TimeoutError, KafkaError, OSError) as exc:
        log.warning("Kafka end offsets unavailable from %s: %r", bootstrap, exc)
        return None
    finally:
        with contextlib.suppress(KafkaError, OSError):
            await asyncio.shield(consumer.stop())
    return {(tp.topic, tp.partition): int(offset) for tp, offset in ends.items()}

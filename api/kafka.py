"""Kafka end offsets for the lag view, bounded by a timeout: Kafka being down never fails a request."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from core.offsets import PROBE_WAIT_MS, EndOffsets, real_end_offsets

log = logging.getLogger(__name__)


def probe_client(bootstrap: str, timeout_s: float) -> AIOKafkaConsumer:
    """A consumer without a group, for :func:`core.offsets.real_end_offsets` (and reading a topic's tail)."""
    return AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        request_timeout_ms=max(1000, int(timeout_s * 1000)),
        fetch_max_wait_ms=PROBE_WAIT_MS,
        # A probe position out of range (retention deleted it meanwhile) restarts at the reported end.
        auto_offset_reset="latest",
    )


async def end_offsets(
    bootstrap: str, topics: Iterable[str], timeout_s: float
) -> EndOffsets[tuple[str, int]] | None:
    """Real end offset of every partition of ``topics``, or None if Kafka does not answer in time."""
    wanted = sorted(set(topics))
    if not wanted:
        return EndOffsets({}, frozenset())
    consumer = probe_client(bootstrap, timeout_s)
    try:
        async with asyncio.timeout(timeout_s):
            await consumer.start()
            partitions = [
                TopicPartition(topic, p)
                for topic in wanted
                for p in sorted(consumer.partitions_for_topic(topic) or ())
            ]
            # Half the time for reading past the reported ends: the rest is for connecting.
            found = await real_end_offsets(consumer, partitions, max_wait_s=timeout_s / 2)
    except (TimeoutError, KafkaError, OSError) as exc:
        log.warning("Kafka end offsets unavailable from %s: %r", bootstrap, exc)
        return None
    finally:
        with contextlib.suppress(KafkaError, OSError):
            await asyncio.shield(consumer.stop())
    return by_name(found)


def by_name(found: EndOffsets[TopicPartition]) -> EndOffsets[tuple[str, int]]:
    """The same end offsets keyed by plain ``(topic, partition)`` tuples."""
    return EndOffsets(
        {(tp.topic, tp.partition): offset for tp, offset in found.ends.items()},
        frozenset((tp.topic, tp.partition) for tp in found.unsettled),
    )

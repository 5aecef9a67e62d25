"""Kafka for the API, always bounded by a timeout: Kafka being down never fails a request.

:func:`end_offsets` feeds the lag view; :func:`snapshot` is the overview's one look at Kafka (end
offsets and the tail of the dead-letter topic through one client, so a poll of the dashboard costs one
connection). The end offsets are the real ones (:func:`core.offsets.real_end_offsets`); in the
snapshot they come first and are kept when the tail does not arrive in time: lag matters more than the
latest dead letters.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from core.deadletter import DeadLetter, decode_dead_letter
from core.offsets import PROBE_CLIENT_OPTIONS, PROBE_WAIT_MS, EndOffsets, real_end_offsets

log = logging.getLogger(__name__)


def probe_client(bootstrap: str, timeout_s: float) -> AIOKafkaConsumer:
    """A consumer without a group, for :func:`core.offsets.real_end_offsets` (and reading a topic's tail)."""
    return AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        request_timeout_ms=max(1000, int(timeout_s * 1000)),
        **PROBE_CLIENT_OPTIONS,
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


@dataclass(frozen=True, slots=True)
class TailRecord:
    """One record of the dead-letter topic: decoded, or the reason it could not be."""

    partition: int
    offset: int
    timestamp_ms: int
    dead_letter: DeadLetter | None
    raw: bytes
    error: str | None = None


@dataclass(frozen=True, slots=True)
class KafkaSnapshot:
    """End offsets (None: Kafka did not answer), the dead-letter topic's size and its latest records."""

    ends: dict[tuple[str, int], int] | None
    unsettled: frozenset[tuple[str, int]] = frozenset()
    """Partitions whose end offset may be low: reading past the reported end was not answered in time."""
    latency_ms: float | None = None
    error: str | None = None
    dlq_size: int | None = None
    tail: list[TailRecord] = field(default_factory=list)
    tail_error: str | None = None


async def snapshot(
    bootstrap: str, topics: Iterable[str], dlq_topic: str, latest: int, timeout_s: float
) -> KafkaSnapshot:
    """End offsets of ``topics`` and ``dlq_topic``, the newest ``latest`` dead letters; in ``timeout_s``."""
    started = time.monotonic()
    consumer = probe_client(bootstrap, timeout_s)
    try:
        try:
            async with asyncio.timeout(timeout_s):
                await consumer.start()
                partitions = [
                    TopicPartition(topic, p)
                    for topic in sorted({*topics, dlq_topic})
                    for p in sorted(consumer.partitions_for_topic(topic) or ())
                ]
                found = await real_end_offsets(consumer, partitions, max_wait_s=timeout_s / 2)
                ends = found.ends
                dlq = [tp for tp in partitions if tp.topic == dlq_topic]
                begins = await consumer.beginning_offsets(dlq) if dlq else {}
        except (TimeoutError, KafkaError, OSError) as exc:
            log.warning("Kafka did not answer the overview from %s: %r", bootstrap, exc)
            return KafkaSnapshot(None, error=f"{type(exc).__name__}: {exc}" if str(exc) else repr(exc))
        latency_ms = (time.monotonic() - started) * 1000
        by_name = {(tp.topic, tp.partition): int(offset) for tp, offset in ends.items()}
        size = sum(max(0, int(ends[tp]) - int(begins[tp])) for tp in dlq)
        tail: list[TailRecord] = []
        tail_error = None
        if latest > 0 and dlq:
            remaining = max(0.1, timeout_s - (time.monotonic() - started))
            try:
                async with asyncio.timeout(remaining):
                    await _read_tail(consumer, dlq, begins, ends, latest, tail)
            except (TimeoutError, KafkaError, OSError) as exc:
                tail_error = f"the dead-letter topic's latest records did not arrive in time ({exc!r})"
        tail.sort(key=lambda r: (r.timestamp_ms, r.partition, r.offset), reverse=True)
        unsettled = frozenset((tp.topic, tp.partition) for tp in found.unsettled)
        return KafkaSnapshot(by_name, unsettled, latency_ms, None, size, tail[:latest], tail_error)
    finally:
        with contextlib.suppress(KafkaError, OSError):
            await asyncio.shield(consumer.stop())


async def _read_tail(
    consumer: AIOKafkaConsumer,
    partitions: list[TopicPartition],
    begins: dict[TopicPartition, int],
    ends: dict[TopicPartition, int],
    latest: int,
    out: list[TailRecord],
) -> None:
    """Append the last ``latest`` records of each partition to ``out`` (partially, if cancelled)."""
    consumer.assign(partitions)
    pending = set()
    for tp in partitions:
        first = max(int(begins[tp]), int(ends[tp]) - latest)
        if first < int(ends[tp]):
            consumer.seek(tp, first)
            pending.add(tp)
    if not pending:
        return
    # Only the partitions still being read: the others would fetch records past the end meanwhile.
    consumer.pause(*(tp for tp in partitions if tp not in pending))
    while pending:
        batch = await consumer.getmany(*pending, timeout_ms=PROBE_WAIT_MS)
        for tp, records in batch.items():
            out.extend(_tail_record(tp.partition, r.offset, r.timestamp, r.value or b"") for r in records)
        for tp in list(pending):
            if await consumer.position(tp) >= int(ends[tp]):
                pending.discard(tp)
                consumer.pause(tp)


def _tail_record(partition: int, offset: int, timestamp_ms: int, raw: bytes) -> TailRecord:
    try:
        return TailRecord(partition, offset, timestamp_ms, decode_dead_letter(raw), raw)
    except (ValueError, KeyError, TypeError) as exc:
        # orjson.JSONDecodeError is a ValueError; a missing or mistyped field a KeyError or TypeError.
        return TailRecord(partition, offset, timestamp_ms, None, raw, f"undecodable record: {exc!r}")

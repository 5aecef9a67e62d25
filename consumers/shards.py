"""Apply one fetched batch: its dead letters first, then its shards in parallel, each retried alone.

A shard is the records of a group of partitions, applied in one transaction. While the store is
unavailable a shard is retried with backoff; when the store refuses its data, its records are applied
one per transaction to find the one at fault, which is dead-lettered; records of partitions revoked
meanwhile are dropped (their new owner applies them).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence

import asyncpg
from aiokafka import AIOKafkaProducer, TopicPartition

from consumers.applied import InsertMode
from consumers.batch import KafkaRecord, PreparedBatch, dead_letter_for, prepare, split_by_partition
from consumers.deadletters import send_dead_letters
from consumers.metrics import ConsumerMetrics
from consumers.rebalance import Assignment
from consumers.settings import ConsumerSettings
from consumers.sink import apply_batch
from consumers.storeerrors import store_connection
from consumers.storehealth import StoreHealth
from core.deadletter import DeadLetter
from core.errors import StoreRejectedData, StoreUnavailable
from core.runtime import Backoff
from core.types import RejectReason

log = logging.getLogger(__name__)

Shards = list[tuple[Sequence[KafkaRecord], PreparedBatch]]
"""The records of each group of partitions and their prepared batch."""


def _now_us() -> int:
    return time.time_ns() // 1000


class ShardApplier:
    """Applies prepared shards to the store exactly once, as the assignment stands when each is applied."""

    def __init__(
        self,
        settings: ConsumerSettings,
        *,
        pool: asyncpg.Pool,
        producer: AIOKafkaProducer,
        assignment: Assignment,
        store: StoreHealth,
        metrics: ConsumerMetrics,
        counters: Sequence[str],
    ) -> None:
        self.settings = settings
        self._pool = pool
        self._producer = producer
        self._assignment = assignment
        self._store = store
        self._metrics = metrics
        self._counters = counters
        self._insert_mode = InsertMode()

    def prepare(self, records: Sequence[KafkaRecord]) -> Shards:
        """Decode ``records`` into one prepared batch per group of partitions applied in parallel."""
        now = _now_us()
        return [
            (group, prepare(group, component_id=self.settings.consumer_id, now_us=now))
            for group in split_by_partition(records, self.settings.db_pool_size)
        ]

    async def apply(self, shards: Shards, records: int, generation: int) -> None:
        """Send the batch's dead letters, then apply its shards in parallel."""
        started = time.perf_counter()
        letters = [dl for _, batch in shards for dl in batch.dead_letters]
        if letters:
            # Before the offsets are stored: a crash in between sends them again, never loses them.
            await self._dead_letter(letters)
        async with asyncio.TaskGroup() as tg:
            for group, batch in shards:
                tg.create_task(self._apply_shard(group, batch, generation))
        log.debug("applied %s records in %.3f s", records, time.perf_counter() - started)

    async def _apply_shard(
        self, records: Sequence[KafkaRecord], batch: PreparedBatch, generation: int
    ) -> None:
        """Apply one shard, retrying while the store is unavailable; drop partitions revoked meanwhile."""
        s = self.settings
        owned = self._assignment
        backoff = Backoff(min(0.1, s.db_retry_max_s), s.db_retry_max_s)
        while True:
            if generation != owned.generation:
                # Fetched before the partitions were (re)assigned and sought to the stored offsets:
                # the fetcher reads them again from there, in order.
                return
            if any(TopicPartition(*tp) not in owned.assigned for tp in batch.offsets):
                records = [r for r in records if TopicPartition(r.topic, r.partition) in owned.assigned]
                if not records:
                    return
                batch = prepare(records, component_id=s.consumer_id, now_us=_now_us())
            started = time.perf_counter()
            attempt = time.monotonic()
            try:
                async with store_connection(self._pool) as conn:
                    applied = await apply_batch(
                        conn, batch, counters=self._counters, group_id=s.group_id, consumer_id=s.consumer_id,
                        assume_new=self._insert_mode.assume_new(),
                    )  # fmt: skip
            except StoreRejectedData as exc:
                await self._apply_rejected(records, batch, exc, generation)
                return
            except StoreUnavailable as exc:
                self._store.down(exc)
                await backoff.sleep()
                continue
            self._store.up(attempt)
            self._insert_mode.record(applied)
            m = self._metrics
            m.batch_seconds.observe(time.perf_counter() - started)
            m.batches.inc()
            m.records.inc(batch.records)
            m.readings.inc(batch.readings)
            m.stored.inc(applied.inserted)
            m.duplicates.inc(applied.duplicates)
            m.corrections.inc(applied.corrected)
            owned.applied(batch.offsets)
            return

    async def _apply_rejected(
        self, records: Sequence[KafkaRecord], batch: PreparedBatch, exc: StoreRejectedData, generation: int
    ) -> None:
        """The database refused the batch's data: find the record(s) at fault, one per transaction."""
        if len(records) > 1:
            log.warning("the store refused a batch (%s); applying its %s records singly", exc, len(records))
            for record in records:
                one = prepare([record], component_id=self.settings.consumer_id, now_us=_now_us())
                await self._apply_shard([record], one, generation)
            return
        record = records[0]
        letter = dead_letter_for(
            record, RejectReason.STORE_REJECTED, f"the store refused the readings: {exc}",
            component_id=self.settings.consumer_id, now_us=_now_us(),
        )  # fmt: skip
        await self._dead_letter([letter])
        await self._apply_shard([record], PreparedBatch(offsets=dict(batch.offsets), records=1), generation)

    async def _dead_letter(self, letters: Sequence[DeadLetter]) -> None:
        await send_dead_letters(self._producer, self.settings.dlq_topic, letters, self._metrics)

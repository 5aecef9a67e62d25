"""The Kafka -> TimescaleDB consumer: batches from a consumer group, applied exactly once to the store.

The store holds the offsets (``consumer_offsets``), written in the transaction of the batch they
belong to; on partition assignment the consumer seeks to them. Kafka commits are made afterwards only
for lag tools. Undecodable records and unstorable readings go to the dead-letter topic; while the
database is unavailable (however its connections were lost, see ``consumers/storeerrors.py``) the consumer
pauses its partitions, reports not ready, and retries the same batch with backoff; a database error no
retry can cure stops it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from types import TracebackType

import asyncpg
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaConnectionError, KafkaError

from consumers.applied import InsertMode
from consumers.batch import KafkaRecord, PreparedBatch, dead_letter_for, prepare, split_by_partition
from consumers.deadletters import send_dead_letters
from consumers.fetch import BatchFetcher
from consumers.http import ProbeServer
from consumers.maintenance import retention_loop
from consumers.metrics import ConsumerMetrics
from consumers.settings import ConsumerSettings
from consumers.sink import apply_batch, stored_offsets
from consumers.storeerrors import store_connection
from consumers.storehealth import StoreHealth
from core.catalogue import load_catalogue
from core.deadletter import DeadLetter
from core.errors import BrokerUnavailable, StoreRejectedData, StoreUnavailable
from core.offsets import PROBE_WAIT_MS, real_end_offsets
from core.types import RejectReason

log = logging.getLogger(__name__)

"""Dead-letter reason of a record the database refused although it decoded (should never happen)."""
_REVOKE_WAIT_S = 30.0


def _now_us() -> int:
    return time.time_ns() // 1000


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, owner: Consumer) -> None:
        self._owner = owner

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self._owner._on_revoked(set(revoked))

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        await self._owner._on_assigned(set(assigned))


class Consumer:
    """One consumer process of the group: ``async with Consumer(settings) as c: await c.wait()``."""

    def __init__(self, settings: ConsumerSettings) -> None:
        self.settings = settings
        self.metrics = ConsumerMetrics()
        self._counters = sorted(load_catalogue(settings.catalogue_file).counters())
        self._insert_mode = InsertMode()
        self._pool: asyncpg.Pool | None = None
        self._kafka: AIOKafkaConsumer | None = None
        self._producer: AIOKafkaProducer | None = None
        self._probe: ProbeServer | None = None
        self._run_task: asyncio.Task[None] | None = None
        self._pending: asyncio.Task[None] | None = None
        self._side_tasks: list[asyncio.Task[None]] = []
        self._assigned: set[TopicPartition] = set()
        self._generation = 0
        """Bumped whenever partitions are assigned (and sought): records fetched before are stale."""
        self._positions: dict[TopicPartition, int] = {}
        self._to_commit: dict[TopicPartition, int] = {}
        self._idle = asyncio.Event()
        self._idle.set()
        self._store = StoreHealth(self.metrics)
        self._fetcher = BatchFetcher(settings, lambda: self._generation)
        self._stopped = False

    @property
    def _k(self) -> AIOKafkaConsumer:
        if self._kafka is None:
            raise RuntimeError("the consumer is not started")
        return self._kafka

    @property
    def _db(self) -> asyncpg.Pool:
        if self._pool is None:
            raise RuntimeError("the consumer is not started")
        return self._pool

    @property
    def http_port(self) -> int:
        """Port of /metrics /healthz /readyz."""
        if self._probe is None:
            raise RuntimeError("the consumer is not started")
        return self._probe.port

    def readiness(self) -> tuple[bool, dict[str, object]]:
        """Ready while started and the store accepts batches."""
        ready = self._run_task is not None and not self._run_task.done() and self._store.ok
        return ready, {
            "store": "ok" if self._store.ok else f"unavailable: {self._store.error}",
            "partitions": sorted(f"{tp.topic}/{tp.partition}" for tp in self._assigned),
        }

    async def start(self) -> None:
        """Connect to the store and Kafka, join the group and start consuming."""
        s = self.settings
        try:
            self._pool = await asyncpg.create_pool(
                s.database_url,
                min_size=0,
                max_size=s.db_pool_size + 1,
                command_timeout=300,
                # The batch statement's best plan depends on the batch; a cached generic plan is
                # several times slower.
                server_settings={
                    "plan_cache_mode": "force_custom_plan",
                    "application_name": f"cityingest-consumer {s.consumer_id}"[:63],
                },
            )
            self._probe = ProbeServer(s.http_host, s.http_port, self.metrics.render, self.readiness)
            await self._probe.start()
            self._producer = AIOKafkaProducer(
                bootstrap_servers=s.kafka_bootstrap,
                client_id=f"{s.consumer_id}-dlq",
                acks="all",
                enable_idempotence=s.kafka_idempotence,
            )
            self._kafka = AIOKafkaConsumer(
                bootstrap_servers=s.kafka_bootstrap,
                group_id=s.group_id,
                client_id=s.consumer_id,
                enable_auto_commit=False,
                auto_offset_reset=s.auto_offset_reset,
                max_partition_fetch_bytes=4 * 1024 * 1024,
                session_timeout_ms=s.kafka_session_timeout_ms,
                heartbeat_interval_ms=max(100, s.kafka_session_timeout_ms // 5),
            )
            self._store.kafka = self._kafka
            self._kafka.subscribe([s.readings_topic], listener=_Rebalance(self))
            try:
                await self._producer.start()
                await self._kafka.start()
            except KafkaConnectionError as exc:
                raise BrokerUnavailable(f"cannot reach Kafka at {s.kafka_bootstrap}: {exc}") from exc
        except BaseException:
            await self.stop()
            raise
        self._run_task = asyncio.create_task(self._run(), name="consumer-run")
        self._side_tasks = [
            asyncio.create_task(
                retention_loop(self._pool, s.retention_days, s.maintenance_interval_s, self.metrics),
                name="consumer-retention",
            ),
            asyncio.create_task(self._commit_loop(), name="consumer-kafka-commit"),
        ]
        log.info("consumer %s started in group %s on %s", s.consumer_id, s.group_id, s.readings_topic)

    async def wait(self) -> None:
        """Run until cancelled; raise if the consume loop died of an unexpected error."""
        if self._run_task is None:
            raise RuntimeError("the consumer is not started")
        await asyncio.shield(self._run_task)

    async def stop(self) -> None:
        """Leave the group and close every connection; an unfinished batch is rolled back. Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        await asyncio.shield(self._cleanup())

    async def _cleanup(self) -> None:
        tasks = [t for t in (self._run_task, *self._side_tasks) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for closer in (
            self._kafka.stop if self._kafka else None,
            self._producer.stop if self._producer else None,
            self._probe.stop if self._probe else None,
        ):
            if closer is not None:
                try:
                    await asyncio.wait_for(closer(), 10.0)
                except Exception:
                    log.warning("error while stopping the consumer", exc_info=True)
        if self._pool is not None:
            try:
                await asyncio.wait_for(self._pool.close(), 5.0)
            except Exception:
                # Whatever a lost connection makes close() raise, nothing may stay half-closed.
                log.warning("closing the store's connections failed; terminating them", exc_info=True)
                self._pool.terminate()
        log.info("consumer %s stopped", self.settings.consumer_id)

    async def __aenter__(self) -> Consumer:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    # -- the consume loop -------------------------------------------------------------------------

    async def _run(self) -> None:
        # Two-stage pipeline: batch N+1 is fetched and decoded while batch N is applied; N always
        # commits before N+1 starts, so a failed batch can never be overtaken by the next one.
        try:
            while True:
                records = await self._fetcher.fetch(self._k)
                generation = self._generation
                # Plain tuples hash and compare like TopicPartition and cost less to build.
                records = [r for r in records if (r.topic, r.partition) in self._assigned]
                # Decoding is CPU work: in a thread, so that the event loop keeps feeding the
                # database the batch in flight meanwhile.
                shards = await asyncio.to_thread(self._prepare, records) if records else []
                if self._pending is not None:
                    await self._pending
                    self._pending = None
                if shards:
                    self._idle.clear()
                    self._pending = asyncio.create_task(self._apply(shards, len(records), generation))
                    self._pending.add_done_callback(lambda _: self._idle.set())
                elif not self._store.ok:
                    await self._ping_store()
                self._update_lag()
        finally:
            if self._pending is not None:
                self._pending.cancel()
                await asyncio.gather(self._pending, return_exceptions=True)

    def _prepare(self, records: Sequence[KafkaRecord]) -> list[tuple[Sequence[KafkaRecord], PreparedBatch]]:
        """Decode ``records`` into one prepared batch per group of partitions applied in parallel."""
        now = _now_us()
        return [
            (group, prepare(group, component_id=self.settings.consumer_id, now_us=now))
            for group in split_by_partition(records, self.settings.db_pool_size)
        ]

    async def _apply(
        self, shards: list[tuple[Sequence[KafkaRecord], PreparedBatch]], records: int, generation: int
    ) -> None:
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
        delay = 0.1
        s = self.settings
        while True:
            if generation != self._generation:
                # Fetched before the partitions were (re)assigned and sought to the stored offsets:
                # the fetcher reads them again from there, in order.
                return
            if any(TopicPartition(*tp) not in self._assigned for tp in batch.offsets):
                records = [r for r in records if TopicPartition(r.topic, r.partition) in self._assigned]
                if not records:
                    return
                batch = prepare(records, component_id=s.consumer_id, now_us=_now_us())
            started = time.perf_counter()
            attempt = time.monotonic()
            try:
                async with store_connection(self._db) as conn:
                    applied = await apply_batch(
                        conn, batch, counters=self._counters, group_id=s.group_id, consumer_id=s.consumer_id,
                        assume_new=self._insert_mode.assume_new(),
                    )  # fmt: skip
            except StoreRejectedData as exc:
                await self._apply_rejected(records, batch, exc, generation)
                return
            except StoreUnavailable as exc:
                self._store.down(exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, s.db_retry_max_s)
                continue
            self._store.up(attempt)
            self._insert_mode.record(applied)
            m = self.metrics
            m.batch_seconds.observe(time.perf_counter() - started)
            m.batches.inc()
            m.records.inc(batch.records)
            m.readings.inc(batch.readings)
            m.stored.inc(applied.inserted)
            m.duplicates.inc(applied.duplicates)
            m.corrections.inc(applied.corrected)
            for (topic, partition), offset in batch.offsets.items():
                tp = TopicPartition(topic, partition)
                self._positions[tp] = max(offset, self._positions.get(tp, 0))
                self._to_commit[tp] = self._positions[tp]
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
        if self._producer is None:
            raise RuntimeError("the consumer is not started")
        await send_dead_letters(self._producer, self.settings.dlq_topic, letters, self.metrics)

    # -- store health -----------------------------------------------------------------------------

    async def _ping_store(self) -> None:
        attempt = time.monotonic()
        try:
            async with store_connection(self._db) as conn:
                await conn.fetchval("SELECT count(*) FROM consumer_offsets WHERE false")
        except StoreUnavailable as exc:
            self._store.down(exc)
            await asyncio.sleep(min(1.0, self.settings.db_retry_max_s))
        else:
            self._store.up(attempt)

    # -- rebalancing, lag and Kafka commits -------------------------------------------------------

    async def _on_revoked(self, revoked: set[TopicPartition]) -> None:
        self._assigned -= revoked
        # A batch started before the revocation finishes (or drops these partitions) before the
        # group moves on; if it cannot, the new owner's batches still apply exactly once because
        # the store serialises them per partition and ignores rows already stored.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), _REVOKE_WAIT_S)
        for tp in revoked:
            self._positions.pop(tp, None)
            self._to_commit.pop(tp, None)
            with contextlib.suppress(KeyError):
                self.metrics.lag.remove(tp.topic, str(tp.partition))
        if revoked:
            log.info("partitions revoked: %s", sorted(f"{tp.topic}/{tp.partition}" for tp in revoked))

    async def _on_assigned(self, assigned: set[TopicPartition]) -> None:
        delay = 0.1
        stored: dict[TopicPartition, int] = {}
        while True:
            try:
                async with store_connection(self._db) as conn:
                    for topic in {tp.topic for tp in assigned}:
                        parts = [tp.partition for tp in assigned if tp.topic == topic]
                        found = await stored_offsets(conn, self.settings.group_id, topic, parts)
                        stored.update({TopicPartition(topic, p): o for p, o in found.items()})
                break
            except StoreUnavailable as exc:
                self._store.down(exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.settings.db_retry_max_s)
        missing = [tp for tp in assigned if tp not in stored]
        start = dict(stored)
        if missing:
            if self.settings.auto_offset_reset == "earliest":
                start.update(await self._k.beginning_offsets(missing))
            else:
                start.update(await self._real_ends(missing))
        # No await from the seeks to the generation bump: every record fetched before comes from the
        # positions the seeks replace (the group's reset or Kafka commit) and is dropped, every record
        # fetched after from the stored offsets.
        for tp, offset in start.items():
            self._k.seek(tp, offset)
            self._positions[tp] = offset
        self._assigned |= assigned
        self._generation += 1
        if not self._store.ok:
            self._k.pause(*assigned)
        log.info(
            "partitions assigned: %s (stored offsets %s)",
            sorted(f"{tp.topic}/{tp.partition}" for tp in assigned),
            {f"{tp.topic}/{tp.partition}": o for tp, o in stored.items()},
        )

    async def _real_ends(self, partitions: Sequence[TopicPartition]) -> dict[TopicPartition, int]:
        """Where ``latest`` starts: each partition's real end (Tansu's ListOffsets answer falls short)."""
        # Its own client without a group: the probe assigns and seeks, which a group member must not.
        client = AIOKafkaConsumer(
            bootstrap_servers=self.settings.kafka_bootstrap,
            group_id=None,
            client_id=f"{self.settings.consumer_id}-ends",
            enable_auto_commit=False,
            fetch_max_wait_ms=PROBE_WAIT_MS,
            auto_offset_reset="latest",
        )
        await client.start()
        try:
            return (await real_end_offsets(client, partitions)).ends
        finally:
            await client.stop()

    def _update_lag(self) -> None:
        # A fetch response's high watermark is the real end on Tansu too (only its ListOffsets answer
        # falls short, see core.offsets): tests/consumers/test_consumer_ends.py keeps it so.
        for tp in self._assigned:
            high = self._k.highwater(tp)
            position = self._positions.get(tp)
            if high is not None and position is not None:
                self.metrics.lag.labels(tp.topic, str(tp.partition)).set(max(high - position, 0))

    async def _commit_loop(self) -> None:
        """Commit the stored offsets to Kafka too (for lag tools), off the batch path."""
        while True:
            await asyncio.sleep(1.0)
            if not self.settings.commit_to_kafka or not self._to_commit:
                continue
            pending, self._to_commit = self._to_commit, {}
            offsets = {tp: o for tp, o in pending.items() if tp in self._assigned}
            if not offsets:
                continue
            try:
                await self._k.commit(offsets)
            except KafkaError as exc:
                log.debug("Kafka commit skipped (the store holds the offsets): %s", exc)


async def serve(settings: ConsumerSettings) -> None:
    """Run a consumer until cancelled (the CLI cancels on SIGINT/SIGTERM), then stop it cleanly."""
    async with Consumer(settings) as consumer:
        await consumer.wait()

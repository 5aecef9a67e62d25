"""The partitions a consumer owns: the group's rebalance callbacks, positions, lag and Kafka commits.

On assignment the consumer seeks each partition to the offset the store holds for it. Reading those
offsets waits for an unavailable store, but only for ``assign_store_wait_s``: the whole group waits for
this callback, so past that the consumer fails (and exits) rather than hold every member up for good.
aiokafka only logs what a listener raises, so a failure here is handed to the consumer's ``fail``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence

import asyncpg
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError

from consumers.kafkaerrors import retriable
from consumers.metrics import ConsumerMetrics
from consumers.settings import ConsumerSettings
from consumers.sink import stored_offsets
from consumers.storeerrors import store_connection
from consumers.storehealth import StoreHealth
from core.errors import StoreUnavailable
from core.offsets import PROBE_CLIENT_OPTIONS, real_end_offsets
from core.runtime import Backoff

log = logging.getLogger(__name__)

_REVOKE_WAIT_S = 30.0
_COMMIT_INTERVAL_S = 1.0


def _names(partitions: Sequence[TopicPartition] | set[TopicPartition]) -> list[str]:
    return sorted(f"{tp.topic}/{tp.partition}" for tp in partitions)


class Assignment(ConsumerRebalanceListener):  # type: ignore[misc]
    """Owned partitions, where each stands, and what to commit to Kafka; the group's rebalance listener."""

    def __init__(
        self,
        settings: ConsumerSettings,
        *,
        kafka: AIOKafkaConsumer,
        pool: asyncpg.Pool,
        store: StoreHealth,
        metrics: ConsumerMetrics,
        idle: asyncio.Event,
        fail: Callable[[BaseException], None],
    ) -> None:
        self.settings = settings
        self._kafka = kafka
        self._pool = pool
        self._store = store
        self._metrics = metrics
        self._idle = idle
        self._fail = fail
        self.assigned: set[TopicPartition] = set()
        self.generation = 0
        """Bumped whenever partitions are assigned (and sought): records fetched before are stale."""
        self._positions: dict[TopicPartition, int] = {}
        self._to_commit: dict[TopicPartition, int] = {}

    def applied(self, offsets: dict[tuple[str, int], int]) -> None:
        """A batch stored these next offsets: they are the partitions' positions now."""
        for (topic, partition), offset in offsets.items():
            tp = TopicPartition(topic, partition)
            self._positions[tp] = max(offset, self._positions.get(tp, 0))
            self._to_commit[tp] = self._positions[tp]

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        """Forget ``revoked`` once the batch in flight is done (or after a bounded wait)."""
        self.assigned -= revoked
        # A batch started before the revocation finishes (or drops these partitions) before the
        # group moves on; if it cannot, the new owner's batches still apply exactly once because
        # the store serialises them per partition and ignores rows already stored.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), _REVOKE_WAIT_S)
        for tp in revoked:
            self._positions.pop(tp, None)
            self._to_commit.pop(tp, None)
            with contextlib.suppress(KeyError):
                self._metrics.lag.remove(tp.topic, str(tp.partition))
        if revoked:
            log.info("partitions revoked: %s", _names(revoked))

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        """Seek ``assigned`` to the offsets the store holds; fail the consumer if that cannot be done."""
        try:
            await self._assign(set(assigned))
        except Exception as exc:  # noqa: BLE001 - handed to the consumer, which fails with it
            # Not raised: aiokafka would only log it. The partitions stay unowned (their records are
            # dropped unapplied) and the consumer stops.
            self._fail(exc)

    async def _assign(self, assigned: set[TopicPartition]) -> None:
        stored = await self._stored_offsets(assigned)
        missing = [tp for tp in assigned if tp not in stored]
        start = dict(stored)
        if missing:
            if self.settings.auto_offset_reset == "earliest":
                start.update(await self._kafka.beginning_offsets(missing))
            else:
                start.update(await self._real_ends(missing))
        # No await from the seeks to the generation bump: every record fetched before comes from the
        # positions the seeks replace (the group's reset or Kafka commit) and is dropped, every record
        # fetched after from the stored offsets.
        for tp, offset in start.items():
            self._kafka.seek(tp, offset)
            self._positions[tp] = offset
        self.assigned |= assigned
        self.generation += 1
        if not self._store.ok:
            self._kafka.pause(*assigned)
        log.info(
            "partitions assigned: %s (stored offsets %s)",
            _names(assigned),
            {f"{tp.topic}/{tp.partition}": o for tp, o in stored.items()},
        )

    async def _stored_offsets(self, assigned: set[TopicPartition]) -> dict[TopicPartition, int]:
        s = self.settings
        deadline = time.monotonic() + s.assign_store_wait_s
        backoff = Backoff(min(0.1, s.db_retry_max_s), s.db_retry_max_s)
        while True:
            stored: dict[TopicPartition, int] = {}
            try:
                async with store_connection(self._pool) as conn:
                    for topic in {tp.topic for tp in assigned}:
                        parts = [tp.partition for tp in assigned if tp.topic == topic]
                        found = await stored_offsets(conn, s.group_id, topic, parts)
                        stored.update({TopicPartition(topic, p): o for p, o in found.items()})
            except StoreUnavailable as exc:
                self._store.down(exc)
                delay = backoff.delay()
                if time.monotonic() + delay > deadline:
                    raise StoreUnavailable(
                        f"could not read the stored offsets of partitions {_names(assigned)} within "
                        f"{s.assign_store_wait_s:g} s (the group waits for them): {exc}"
                    ) from exc
                await asyncio.sleep(delay)
                continue
            return stored

    async def _real_ends(self, partitions: Sequence[TopicPartition]) -> dict[TopicPartition, int]:
        """Where ``latest`` starts: each partition's real end (Tansu's ListOffsets answer falls short)."""
        # Its own client: the probe assigns and seeks, which a group member must not.
        client = AIOKafkaConsumer(
            bootstrap_servers=self.settings.kafka_bootstrap,
            client_id=f"{self.settings.consumer_id}-ends",
            **PROBE_CLIENT_OPTIONS,
        )
        await client.start()
        try:
            return (await real_end_offsets(client, partitions)).ends
        finally:
            await client.stop()

    def update_lag(self) -> None:
        """Set the lag gauge of each owned partition from the last fetch's high watermark."""
        # A fetch response's high watermark is the real end on Tansu too (only its ListOffsets answer
        # falls short, see core.offsets): tests/consumers/test_consumer_ends.py keeps it so.
        for tp in self.assigned:
            high = self._kafka.highwater(tp)
            position = self._positions.get(tp)
            if high is not None and position is not None:
                self._metrics.lag.labels(tp.topic, str(tp.partition)).set(max(high - position, 0))

    async def commit_loop(self) -> None:
        """Commit the stored offsets to Kafka too (for lag tools), off the batch path."""
        while True:
            await asyncio.sleep(_COMMIT_INTERVAL_S)
            if not self.settings.commit_to_kafka or not self._to_commit:
                continue
            pending, self._to_commit = self._to_commit, {}
            offsets = {tp: o for tp, o in pending.items() if tp in self.assigned}
            if not offsets:
                continue
            try:
                await self._kafka.commit(offsets)
            except KafkaError as exc:
                # The store holds the offsets: a commit lost to an outage or a rebalance (the group
                # moved on, or the partitions are not assigned right now) costs nothing.
                if not (retriable(exc) or isinstance(exc, CommitFailedError | IllegalStateError)):
                    raise
                log.debug("Kafka commit skipped (the store holds the offsets): %r", exc)

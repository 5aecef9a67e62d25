"""Real end offsets against a real Kafka-protocol broker (Tansu), after batched and single produces."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from api.ops.kafka import probe_client
from core.offsets import EndOffsets, real_end_offsets
from tests.api.conftest import burst
from tests.conftest import KafkaTopics
from tests.consumers.harness import produce

pytestmark = pytest.mark.integration


@pytest.fixture
async def client(kafka_bootstrap: str) -> AsyncIterator[AIOKafkaConsumer]:
    """A started consumer without a group, as every caller of real_end_offsets passes."""
    consumer = probe_client(kafka_bootstrap, 10.0)
    await consumer.start()
    try:
        yield consumer
    finally:
        await consumer.stop()


async def test_real_ends_count_every_record_of_batched_produces(
    kafka_bootstrap: str, kafka_topics: KafkaTopics, client: AIOKafkaConsumer
) -> None:
    topic = kafka_topics.readings
    # Batches of 7 records, as the bridge's producer forms them under load; then single records.
    truth = await produce(kafka_bootstrap, topic, burst("burst-1", 300), chunk=7)
    [(partition, end)] = truth.items()
    assert end == 300
    single = await produce(kafka_bootstrap, topic, burst("burst-1", 2), chunk=1)
    assert single == {partition: 302}
    await produce(kafka_bootstrap, topic, burst("burst-1", 5), chunk=5)
    partitions = [TopicPartition(topic, p) for p in range(3)]

    found = await real_end_offsets(client, partitions)

    expected = {tp: 307 if tp.partition == partition else 0 for tp in partitions}
    assert found.ends == expected
    assert found.unsettled == frozenset()
    # The client can be used again (the API's overview reads the dead-letter tail with it next).
    assert (await real_end_offsets(client, partitions)).ends == expected


async def test_real_ends_are_bounded_and_say_so(
    kafka_bootstrap: str, kafka_topics: KafkaTopics, client: AIOKafkaConsumer
) -> None:
    topic = kafka_topics.readings
    truth = await produce(kafka_bootstrap, topic, burst("burst-2", 40), chunk=10)
    [(partition, end)] = truth.items()
    tp = TopicPartition(topic, partition)
    reported = (await client.end_offsets([tp]))[tp]

    # Out of records after the first answer from e - 1: that answer held the last batch, so the end.
    capped = await real_end_offsets(client, [tp], max_records=1)
    assert (capped.ends, capped.unsettled) == ({tp: end}, frozenset())
    # No time at all: the reported end, flagged.
    hurried = await real_end_offsets(client, [tp], max_wait_s=0)
    assert (hurried.ends, hurried.unsettled) == ({tp: reported}, frozenset({tp}))
    # An empty partition needs no fetch and is settled at 0.
    empty = TopicPartition(topic, next(p for p in range(3) if p != partition))
    assert await real_end_offsets(client, [empty], max_wait_s=0) == EndOffsets({empty: 0}, frozenset())


async def test_real_ends_of_a_partition_still_written_to(
    kafka_bootstrap: str, kafka_topics: KafkaTopics, client: AIOKafkaConsumer
) -> None:
    """A producer that does not stop: the probe ends within its bounds, at or past the end of the call."""
    topic = kafka_topics.readings
    readings = burst("burst-3", 2000)
    [(partition, end)] = (await produce(kafka_bootstrap, topic, readings[:100], chunk=7)).items()
    tp = TopicPartition(topic, partition)
    writing = asyncio.create_task(produce(kafka_bootstrap, topic, readings[100:], chunk=7, pause_s=0.01))
    try:
        found = await real_end_offsets(client, [tp], max_wait_s=1.0)
    finally:
        writing.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await writing
    assert found.unsettled == frozenset()
    assert end <= found.ends[tp] <= 2000

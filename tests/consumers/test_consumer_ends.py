"""End offsets in the consumer against real Tansu, after a burst produced in batches (as the bridge does):
where ``latest`` starts, and the lag metric."""

from __future__ import annotations

import asyncpg
import httpx
import pytest

from consumers.consumer import Consumer
from tests.api.conftest import burst
from tests.conftest import KafkaTopics
from tests.consumers.harness import eventually, produce, wait_applied
from tests.consumers.test_consumer import settings_for

pytestmark = pytest.mark.integration


async def test_latest_starts_after_the_last_record(
    database_url: str, kafka_bootstrap: str, kafka_topics: KafkaTopics
) -> None:
    topic = kafka_topics.readings
    readings = burst("ends-1", 301)
    # Batches of 7: Tansu's ListOffsets answer is then the last batch's base offset + 1, not 300.
    await produce(kafka_bootstrap, topic, readings[:300], chunk=7)
    settings = settings_for(database_url, kafka_bootstrap, kafka_topics, auto_offset_reset="latest")
    async with Consumer(settings) as consumer:

        async def assigned() -> bool:
            return bool(consumer.assigned_partitions)

        await eventually(assigned, 30)
        ends = await produce(kafka_bootstrap, topic, readings[300:])
        await wait_applied(database_url, topic, ends)
    conn = await asyncpg.connect(database_url)
    try:
        stored = await conn.fetchval("SELECT count(*) FROM readings WHERE device_id = 'ends-1'")
    finally:
        await conn.close()
    assert stored == 1  # only the reading produced after the consumer started


async def test_lag_metric_counts_the_records_of_batched_produces(
    database_url: str, kafka_bootstrap: str, kafka_topics: KafkaTopics
) -> None:
    topic = kafka_topics.readings
    # Batches of 7, as the bridge's producer forms them: Tansu's end offsets and high watermarks then
    # stop at the last batch's base offset + 1.
    ends = await produce(kafka_bootstrap, topic, burst("lag-1", 300), chunk=7)
    [(partition, end)] = ends.items()
    line = f'cityingest_consumer_lag{{partition="{partition}",topic="{topic}"}} {float(end)}'
    conn = await asyncpg.connect(database_url)
    try:
        # The store takes no batch while this transaction holds the offsets table (reads still pass):
        # the consumer has fetched the burst and applied none of it.
        async with conn.transaction():
            await conn.execute("LOCK TABLE consumer_offsets IN EXCLUSIVE MODE")
            async with (
                Consumer(settings_for(database_url, kafka_bootstrap, kafka_topics)) as consumer,
                httpx.AsyncClient(base_url=f"http://127.0.0.1:{consumer.http_port}") as http,
            ):
                seen: list[str] = []

                async def whole_burst_lags() -> bool:
                    lines = (await http.get("/metrics")).text.splitlines()
                    seen[:] = [x for x in lines if x.startswith("cityingest_consumer_lag{")]
                    return line in lines

                try:
                    await eventually(whole_burst_lags, 30, every_s=0.5)
                except TimeoutError:
                    pytest.fail(f"no {line!r} in the consumer's metrics; lag lines: {seen}")
    finally:
        await conn.close()

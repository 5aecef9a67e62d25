"""A record mixing good readings with one the store cannot hold, through the real consumer, Tansu and
TimescaleDB: the good ones are stored exactly once, one dead letter names the bad one."""

from __future__ import annotations

import pytest

from consumers.consumer import Consumer
from core.deadletter import decode_dead_letter
from core.readings import MAX_TS_US, MIN_TS_US, Envelope, Reading, decode_envelope, encode_envelope
from tests.conftest import KafkaTopics
from tests.consumers.harness import produce, read_log, wait_applied
from tests.consumers.streams import START_US, make_stream, seeded
from tests.consumers.test_consumer import assert_store_is_truth, read_dlq, settings_for

pytestmark = pytest.mark.integration


async def test_a_reading_out_of_range_is_dead_lettered_without_its_neighbours(
    database_url: str, kafka_bootstrap: str, kafka_topics: KafkaTopics
) -> None:
    envelopes = make_stream(seeded(61), devices=6, messages=300)
    ts = START_US + 3_600_000_000
    # What an older bridge, or another producer, may still send: one device message, acknowledged
    # together, whose third reading has a broken clock.
    bad = Reading("water_flow", MAX_TS_US + 1_000_000, 7.5, 0)
    mixed = Envelope(
        "dev-mixed",
        "water",
        "bridge-old",
        ts,
        (
            Reading("water_flow", ts, 1.25, 0),
            Reading("energy_import_kwh", ts, 10.0, 0),
            bad,
            Reading("water_flow", MIN_TS_US, 2.5, 0),
            Reading("temperature", ts, 20.25, 1),
        ),
    )
    ends = await produce(kafka_bootstrap, kafka_topics.readings, [*envelopes[:150], mixed, *envelopes[150:]])
    async with Consumer(settings_for(database_url, kafka_bootstrap, kafka_topics)) as consumer:
        await wait_applied(database_url, kafka_topics.readings, ends)
        counted = {
            sample.labels["reason"]: sample.value
            for metric in consumer.metrics.dead_letters.collect()
            for sample in metric.samples
            if sample.name.endswith("_total")
        }
    assert counted == {"bad_timestamp": 1.0}
    [letter] = [decode_dead_letter(raw) for raw in await read_dlq(kafka_bootstrap, kafka_topics.dlq, 1)]
    assert (letter.reason, letter.source, letter.device_id) == ("bad_timestamp", "kafka", "dev-mixed")
    # It carries the bad reading alone, and points at the record it came from.
    assert decode_envelope(letter.raw) == Envelope("dev-mixed", "water", "bridge-old", ts, (bad,))
    assert letter.message.startswith("1 of 5 readings not stored: reading 2: ")
    topic, partition, offset = letter.origin.rsplit("/", 2)
    assert topic == kafka_topics.readings
    logged = await read_log(kafka_bootstrap, topic, {int(partition): int(offset) + 1})
    assert logged[-1] == encode_envelope(mixed)
    # Its four neighbours are stored exactly once with the rest of the stream, rollups included.
    await assert_store_is_truth(
        database_url, [*envelopes, mixed], kafka_bootstrap, kafka_topics.readings, ends
    )

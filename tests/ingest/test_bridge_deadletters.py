"""Messages full of invalid readings through real Mosquitto and Tansu: one bounded dead letter per message,
and the bytes of unacknowledged messages bounded (intake pauses, a message above the budget still passes)."""

from __future__ import annotations

import time
import uuid
from collections import Counter
from pathlib import Path

import httpx
import pytest

from bench.deadletters import invalid_batch
from core.catalogue import load_catalogue
from devstack.kafka import ensure_topics
from devstack.mosquitto import MosquittoBroker
from ingest import records as ingest_records
from ingest.bridge import Bridge
from ingest.parse import PayloadParser
from ingest.records import RecordMaker
from ingest.settings import BridgeSettings
from tests.conftest import KafkaTopics
from tests.ingest.support import (
    TopicReader,
    bridge_settings,
    eventually,
    gated_tansu,
    publish,
    wired_settings,
)

pytestmark = [pytest.mark.integration]

KAFKA_RECORD_LIMIT = 1_048_576


def _message_bytes(settings: BridgeSettings, topic: str, payload: bytes) -> int:
    """What the bridge holds for one message until it is acknowledged: its records' keys and values."""
    parser = PayloadParser(
        load_catalogue(),
        bridge_id=settings.bridge_id,
        topic_prefix=settings.mqtt_topic_prefix,
        max_payload_bytes=settings.max_payload_bytes,
    )
    maker = RecordMaker(
        parser,
        bridge_id=settings.bridge_id,
        readings_topic=settings.readings_topic,
        dlq_topic=settings.dlq_topic,
        max_payload_bytes=settings.max_payload_bytes,
        rejected=Counter(),
    )
    records = maker.records(payload, topic, time.time_ns() // 1000)
    return sum(len(r.value) + len(r.key or b"") for r in records)


async def test_a_message_of_invalid_readings_is_one_dead_letter_counting_every_reading(
    mqtt_broker: MosquittoBroker, kafka_bootstrap: str, kafka_topics: KafkaTopics, mqtt_prefix: str
) -> None:
    settings = wired_settings(mqtt_broker, kafka_bootstrap, kafka_topics, mqtt_prefix)
    sent: dict[str, tuple[bytes, Counter[str]]] = {}
    for i in range(3):
        sent[f"bad-{i}"] = invalid_batch([10.0 * i + 1, 10.0 * i + 2])
    assert all(len(payload) <= settings.max_payload_bytes for payload, _ in sent.values())
    async with Bridge(settings) as bridge:
        await eventually(lambda: not bridge.not_ready_reasons(), 30, "the bridge to be ready")
        messages = [
            (f"{mqtt_prefix}/water/{device}/telemetry", payload) for device, (payload, _) in sent.items()
        ]
        await publish(mqtt_broker.host, mqtt_broker.port, messages)
        await eventually(lambda: bridge.stats.messages_acked == len(sent), 60, "every message acked")
        # Counted when Kafka acknowledged them, before the message's ack: exact once all are acked.
        assert bridge.stats.dead_letters_written == len(sent)
        async with TopicReader(kafka_bootstrap, kafka_topics.dlq) as dlq:
            await dlq.until(lambda: len(dlq.records) >= len(sent), 30, "the dead letters")
        async with TopicReader(kafka_bootstrap, kafka_topics.readings) as readings:
            await readings.until(lambda: len(readings.values()) >= 2 * len(sent), 30, "the valid readings")
    assert len(dlq.records) == len(sent)
    assert max(len(r.value) for r in dlq.records) < KAFKA_RECORD_LIMIT
    letters = {dl.device_id: dl for dl in dlq.dead_letters()}
    assert set(letters) == set(sent)
    total: Counter[str] = Counter()
    for device, (payload, expected) in sent.items():
        dl = letters[device]
        assert dl.raw == payload  # the payload once, whole: replayable
        assert dl.readings is not None
        assert dl.rejections() == expected  # every rejected reading, counted by reason
        assert dl.readings.forwarded == 2
        assert dl.reason == "unknown_metric"  # the most frequent (a tie here: the first in the payload)
        details = dl.readings.details
        assert len(details) == ingest_records.MAX_DETAILS
        assert [d.index for d in details] == list(range(2, 2 + ingest_records.MAX_DETAILS))
        assert [d.reason for d in details[:2]] == ["unknown_metric", "non_numeric_value"]
        assert details[0].message.startswith("reading 2: ")
        total += expected
    assert bridge.stats.rejected == total
    assert sorted(readings.values()) == sorted(v for i in range(3) for v in (10.0 * i + 1, 10.0 * i + 2))


async def test_a_message_larger_than_the_byte_budget_still_goes_through(
    mqtt_broker: MosquittoBroker, kafka_bootstrap: str, kafka_topics: KafkaTopics, mqtt_prefix: str
) -> None:
    settings = wired_settings(
        mqtt_broker,
        kafka_bootstrap,
        kafka_topics,
        mqtt_prefix,
        max_in_flight_bytes=1,
    )
    topic = f"{mqtt_prefix}/water/big/telemetry"
    payloads = [invalid_batch([float(i)], 50_000)[0] for i in range(5)]
    async with Bridge(settings) as bridge:
        await eventually(lambda: not bridge.not_ready_reasons(), 30, "the bridge to be ready")
        await publish(mqtt_broker.host, mqtt_broker.port, [(topic, p) for p in payloads])
        await eventually(lambda: bridge.stats.messages_acked == len(payloads), 60, "every message acked")
        assert bridge.stats.dead_letters_written == len(payloads)
        assert bridge.stats.intake_pauses == len(payloads)  # each one alone above the budget
        assert bridge.stats.in_flight_bytes_peak == max(_message_bytes(settings, topic, p) for p in payloads)
        await eventually(lambda: not bridge.intake_paused, 10, "intake to resume")
        assert bridge.in_flight_bytes == 0
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{bridge.http_port}") as http:
            metrics = (await http.get("/metrics")).text
    assert f"cityingest_bridge_intake_pauses_total {len(payloads)}.0" in metrics
    assert "cityingest_bridge_in_flight_bytes 0.0" in metrics
    assert f"cityingest_bridge_in_flight_bytes_peak {float(bridge.stats.in_flight_bytes_peak)}" in metrics


@pytest.mark.slow
async def test_the_byte_budget_pauses_intake_while_kafka_does_not_acknowledge(
    mqtt_broker: MosquittoBroker, mqtt_prefix: str, tmp_path: Path
) -> None:
    # Kafka behind a gate, shut: nothing is acknowledged, so unacknowledged bytes only grow until the
    # budget stops the bridge reading; the message window (1000) alone would take all of them.
    gate, tansu = await gated_tansu(tmp_path)
    readings, dlq = f"readings.{uuid.uuid4().hex[:8]}", f"dlq.{uuid.uuid4().hex[:8]}"
    budget = 1_000_000
    settings = bridge_settings(
        mqtt_broker.host,
        mqtt_broker.port,
        tansu.bootstrap,
        readings,
        dlq,
        mqtt_prefix,
        max_in_flight_bytes=budget,
    )
    topic = f"{mqtt_prefix}/water/heavy/telemetry"
    payloads = [invalid_batch([float(i)], 200_000)[0] for i in range(12)]
    sizes = [_message_bytes(settings, topic, p) for p in payloads]
    # The first message whose bytes take the total above the budget is the last one read.
    taken = next(n for n in range(1, len(sizes) + 1) if sum(sizes[:n]) > budget)
    assert taken < len(payloads)
    try:
        await ensure_topics(tansu.bootstrap, {readings: 3, dlq: 1})
        async with Bridge(settings) as bridge:
            await eventually(lambda: not bridge.not_ready_reasons(), 30, "the bridge to be ready")
            await gate.shut()
            await publish(mqtt_broker.host, mqtt_broker.port, [(topic, p) for p in payloads])
            await eventually(lambda: bridge.intake_paused, 30, "intake to pause at the byte budget")
            assert bridge.stats.messages_received == taken
            assert bridge.in_flight == taken
            assert budget < bridge.in_flight_bytes <= budget + max(sizes)

            await gate.open()
            await eventually(lambda: bridge.stats.messages_acked == len(payloads), 90, "every message acked")
            assert bridge.stats.in_flight_bytes_peak <= budget + max(sizes)
            assert bridge.stats.intake_pauses >= 1
            async with TopicReader(tansu.bootstrap, dlq) as reader:
                await reader.until(lambda: len(reader.records) >= len(payloads), 60, "every dead letter")
            # Retries may write a record twice, never lose one.
            assert {dl.raw for dl in reader.dead_letters()} == set(payloads)
    finally:
        await gate.shut()
        tansu.stop()

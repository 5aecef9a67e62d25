"""The bridge through real Mosquitto and Tansu: valid traffic to ``readings``, bad traffic to the DLQ."""

from __future__ import annotations

import asyncio
import base64
from collections import Counter

import httpx
import orjson
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from core.types import ReadingFlag
from devstack.mosquitto import MosquittoBroker
from ingest.bridge import Bridge
from ingest.settings import BridgeSettings
from tests.conftest import KafkaTopics
from tests.ingest.support import (
    TopicReader,
    eventually,
    publish,
    publish_qos0,
    reading_msg,
    wired_settings,
)

pytestmark = [pytest.mark.integration]


async def test_valid_traffic_lands_in_readings(
    mqtt_broker: MosquittoBroker, kafka_bootstrap: str, kafka_topics: KafkaTopics, mqtt_prefix: str
) -> None:
    settings = wired_settings(mqtt_broker, kafka_bootstrap, kafka_topics, mqtt_prefix)
    single = {"metric": "water_flow", "value": 12.5, "ts": "2026-01-01T00:00:00Z", "unit": "m3/h"}
    batch = {
        "readings": [{"metric": "voltage", "value": 231.0, "ts": 1.767e9}, {"metric": "current", "value": 5}]
    }
    senml = [
        {"bn": "urn:dev:meter-1:", "bt": 1.767e9, "n": "energy_import_kwh", "s": 1500, "u": "Wh"},
        {"n": "active_power", "v": 2.5, "t": 60},
    ]
    async with Bridge(settings) as bridge:
        await eventually(lambda: not bridge.not_ready_reasons(), 30, "the bridge to be ready")
        await publish(
            mqtt_broker.host,
            mqtt_broker.port,
            [
                (f"{mqtt_prefix}/water/pump-1/telemetry", orjson.dumps(single)),
                (f"{mqtt_prefix}/power/meter-1/telemetry", orjson.dumps(batch)),
                (f"{mqtt_prefix}/power/meter-1/telemetry", orjson.dumps(senml)),
            ],
        )
        async with TopicReader(kafka_bootstrap, kafka_topics.readings) as reader:
            await reader.until(lambda: len(reader.records) >= 3, 30, "three envelopes")
        await eventually(lambda: bridge.stats.messages_acked == 3, 10, "all three MQTT messages acked")
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{bridge.http_port}") as http:
            metrics = (await http.get("/metrics")).text
            assert (await http.get("/healthz")).status_code == 200
            ready = await http.get("/readyz")
            assert ready.status_code == 200, ready.text
            assert (await http.get("/nope")).status_code == 404
    assert bridge.stats.rejected_total == 0
    by_device = {(r.key, orjson.loads(r.value)["device"]) for r in reader.records}
    assert by_device == {(b"pump-1", "pump-1"), (b"meter-1", "meter-1")}
    envelopes = reader.envelopes()
    readings = sorted((r.metric, r.value, r.flags) for env in envelopes for r in env.readings)
    assert readings == [
        ("active_power", 2.5, 0),
        ("current", 5.0, ReadingFlag.NO_TIMESTAMP),
        ("energy_import_kwh", 1.5, ReadingFlag.UNIT_CONVERTED),
        ("voltage", 231.0, 0),
        ("water_flow", 12.5, 0),
    ]
    assert {env.domain for env in envelopes} == {"water", "power"}
    assert {env.bridge_id for env in envelopes} == {settings.bridge_id}
    assert "cityingest_bridge_readings_forwarded_total 5.0" in metrics
    assert "cityingest_bridge_messages_received_total 3.0" in metrics
    assert "cityingest_bridge_ready 1.0" in metrics


async def test_bad_traffic_is_dead_lettered_with_its_reason(
    mqtt_broker: MosquittoBroker, kafka_bootstrap: str, kafka_topics: KafkaTopics, mqtt_prefix: str
) -> None:
    settings = wired_settings(
        mqtt_broker,
        kafka_bootstrap,
        kafka_topics,
        mqtt_prefix,
        max_payload_bytes=1024,
    )
    water = f"{mqtt_prefix}/water/w-1/telemetry"
    not_utf8 = b'{"metric": "\xff"}'
    mixed = {"readings": [{"metric": "water_flow", "value": 1.0}, {"metric": "nope", "value": 2}]}
    messages = [
        (water, b"{not json"),
        (water, not_utf8),
        (water, b"[" + b" " * 2000 + b"]"),
        (water, orjson.dumps({"metric": "water_flow", "value": 1, "device": "w-2"})),
        (water, orjson.dumps({"metric": "water_flow", "value": "1"})),
        (water, orjson.dumps({"metric": "water_flow", "value": 1, "unit": "furlong"})),
        (water, orjson.dumps({"metric": "water_flow", "value": 1, "ts": "2999-01-01T00:00:00Z"})),
        (water, orjson.dumps([{"bver": 99, "n": "water_flow", "v": 1}])),
        (f"{mqtt_prefix}/gas/g-1/telemetry", orjson.dumps({"metric": "water_flow", "value": 1})),
        (water, orjson.dumps(mixed)),
    ]
    expected = Counter(
        {
            "invalid_json": 1,
            "not_utf8": 1,
            "payload_too_large": 1,
            "device_mismatch": 1,
            "non_numeric_value": 1,
            "unit_mismatch": 1,
            "future_timestamp": 1,
            "senml_unsupported_version": 1,
            "unknown_domain": 1,
            "unknown_metric": 1,
        }
    )
    async with Bridge(settings) as bridge:
        await eventually(lambda: not bridge.not_ready_reasons(), 30, "the bridge to be ready")
        await publish(mqtt_broker.host, mqtt_broker.port, messages)
        async with TopicReader(kafka_bootstrap, kafka_topics.dlq) as dlq:
            await dlq.until(lambda: len(dlq.records) >= expected.total(), 30, "the dead letters")
        async with TopicReader(kafka_bootstrap, kafka_topics.readings) as readings:
            await readings.until(lambda: len(readings.records) >= 1, 30, "the valid half of the batch")
        await eventually(lambda: bridge.stats.messages_acked == len(messages), 10, "every message acked")
    letters = dlq.dead_letters()
    assert Counter(dl.reason for dl in letters) == expected
    assert dict(bridge.stats.rejected) == dict(expected)
    for dl in letters:
        assert dl.source == "mqtt"
        assert dl.component_id == settings.bridge_id
        assert dl.message
        assert dl.received_us > 0
    by_reason = {dl.reason: dl for dl in letters}
    assert by_reason["not_utf8"].raw == not_utf8
    assert orjson.loads(dlq.records[[d.reason for d in letters].index("not_utf8")].value)["payload"] == (
        base64.b64encode(not_utf8).decode()
    )
    assert by_reason["invalid_json"].raw == b"{not json"
    assert by_reason["payload_too_large"].raw == (b"[" + b" " * 2000)[:1024]
    assert by_reason["invalid_json"].origin == water
    assert by_reason["invalid_json"].device_id == "w-1"
    assert by_reason["unknown_domain"].origin == f"{mqtt_prefix}/gas/g-1/telemetry"
    # The rejected reading's dead letter carries its whole message once, the reading named by index.
    assert orjson.loads(by_reason["unknown_metric"].raw) == mixed
    mixed_readings = by_reason["unknown_metric"].readings
    assert mixed_readings is not None
    assert (mixed_readings.forwarded, [d.index for d in mixed_readings.details]) == (1, [1])
    assert readings.values() == [1.0]


async def test_two_bridges_share_a_subscription_without_duplicates(
    mqtt_broker: MosquittoBroker, kafka_bootstrap: str, kafka_topics: KafkaTopics, mqtt_prefix: str
) -> None:
    def settings(name: str) -> BridgeSettings:
        return wired_settings(
            mqtt_broker,
            kafka_bootstrap,
            kafka_topics,
            mqtt_prefix,
            shared_group="bridges",
            bridge_id=name,
        )

    total = 2000
    messages = [reading_msg(mqtt_prefix, f"dev-{i % 40}", float(i)) for i in range(total)]
    async with Bridge(settings("one")) as one, Bridge(settings("two")) as two:
        for bridge in (one, two):
            await eventually(lambda b=bridge: not b.not_ready_reasons(), 30, "both bridges ready")
        await publish(mqtt_broker.host, mqtt_broker.port, messages)
        async with TopicReader(kafka_bootstrap, kafka_topics.readings) as reader:
            try:
                await reader.until(lambda: len(reader.values()) >= total, 60, "every reading")
            except AssertionError as exc:
                # Seen once (1,991 of 2,000 on a clean CI run, not reproduced since): say where the rest are.
                raise AssertionError(f"{exc}; bridge one {one.stats}; bridge two {two.stats}") from None
            await eventually(
                lambda: one.stats.messages_acked + two.stats.messages_acked == total, 10, "all acked"
            )
            await reader.poll()
    values = reader.values()
    assert sorted(values) == [float(i) for i in range(total)]  # each exactly once
    assert one.stats.messages_received > 0
    assert two.stats.messages_received > 0
    assert one.stats.messages_received + two.stats.messages_received == total
    bridges = Counter(env.bridge_id for env in reader.envelopes())
    assert bridges == Counter({"one": one.stats.messages_received, "two": two.stats.messages_received})


async def test_publish_properties_and_qos_0_are_handled(
    mqtt_broker: MosquittoBroker, kafka_bootstrap: str, kafka_topics: KafkaTopics, mqtt_prefix: str
) -> None:
    """MQTT 5 properties on a PUBLISH are skipped correctly; a QoS 0 message is forwarded and needs no ack."""
    settings = wired_settings(mqtt_broker, kafka_bootstrap, kafka_topics, mqtt_prefix)
    props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    props.UserProperty = [("site", "north" * 40), ("fw", "1.2.3")]
    props.ContentType = "application/json"
    props.MessageExpiryInterval = 3600
    async with Bridge(settings) as bridge:
        await eventually(lambda: not bridge.not_ready_reasons(), 30, "the bridge to be ready")
        await publish(
            mqtt_broker.host,
            mqtt_broker.port,
            [reading_msg(mqtt_prefix, "p-1", float(i)) for i in range(5)],
            properties=props,
        )
        topic, payload = reading_msg(mqtt_prefix, "p-2", 99.0)
        await asyncio.to_thread(publish_qos0, mqtt_broker.host, mqtt_broker.port, topic, payload)
        async with TopicReader(kafka_bootstrap, kafka_topics.readings) as reader:
            await reader.until(lambda: len(reader.records) >= 6, 30, "six envelopes")
        await eventually(lambda: bridge.in_flight == 0, 10, "nothing in flight")
    assert sorted(reader.values()) == [0.0, 1.0, 2.0, 3.0, 4.0, 99.0]
    assert bridge.stats.messages_acked == 5  # the QoS 0 message has nothing to acknowledge
    assert bridge.stats.rejected_total == 0

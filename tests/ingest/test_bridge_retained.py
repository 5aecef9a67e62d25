"""Retained telemetry through real Mosquitto: a retained reading is taken once, when it is published, and
never again when the bridge (re)subscribes; a stored copy that still arrives is dead-lettered."""

from __future__ import annotations

from collections import Counter

import orjson
import pytest

import ingest.mqtt
from devstack.mosquitto import MosquittoBroker
from ingest.bridge import Bridge
from ingest.settings import BridgeSettings
from tests.conftest import KafkaTopics
from tests.ingest.support import TopicReader, bridge_settings, eventually, publish, reading_msg

pytestmark = [pytest.mark.integration]


def _no_ts(value: float) -> bytes:
    # Without a time the bridge stamps the receive time: every extra delivery is one more reading.
    return orjson.dumps({"metric": "water_flow", "value": value})


async def _run_once(
    settings: BridgeSettings, host: str, port: int, reader: TopicReader, value: float
) -> Bridge:
    """Start a bridge, let it take what the broker sends on subscribe plus a sentinel reading published
    after that, and stop it gracefully (its session stays on the broker)."""
    async with Bridge(settings) as bridge:
        await eventually(lambda: not bridge.not_ready_reasons(), 30, "the bridge to be ready")
        await publish(host, port, [reading_msg(settings.mqtt_topic_prefix, "s", value)])
        await reader.until(lambda: value in reader.values(), 30, f"the sentinel {value}")
        await eventually(lambda: bridge.in_flight == 0, 30, "nothing in flight")
    return bridge


async def test_retained_reading_is_counted_once_across_bridge_restarts(
    mqtt_broker: MosquittoBroker, kafka_bootstrap: str, kafka_topics: KafkaTopics, mqtt_prefix: str
) -> None:
    host, port = mqtt_broker.host, mqtt_broker.port
    settings = bridge_settings(
        host, port, kafka_bootstrap, kafka_topics.readings, kafka_topics.dlq, mqtt_prefix
    )
    live = f"{mqtt_prefix}/water/r-1/telemetry"
    away = f"{mqtt_prefix}/water/r-2/telemetry"
    try:
        async with Bridge(settings) as bridge:
            await eventually(lambda: not bridge.not_ready_reasons(), 30, "the bridge to be ready")
            await publish(host, port, [(live, _no_ts(1.0))], retain=True)
            await eventually(lambda: bridge.stats.messages_acked == 1, 30, "the retained reading acked")
        # Published while the bridge is away: queued in its session, a live message like any other.
        await publish(host, port, [(away, _no_ts(2.0))], retain=True)
        async with TopicReader(kafka_bootstrap, kafka_topics.readings) as readings:
            restarts = [await _run_once(settings, host, port, readings, 100.0 + i) for i in range(2)]
            await readings.until(lambda: len(readings.values()) >= 4, 30, "the four readings")
            await readings.poll()  # every bridge stopped with nothing in flight: nothing more comes
        async with TopicReader(kafka_bootstrap, kafka_topics.dlq) as dlq:
            await dlq.poll()
    finally:
        await publish(host, port, [(live, b""), (away, b"")], retain=True)  # clears the retained copies
    assert Counter(readings.values()) == Counter({1.0: 1, 2.0: 1, 100.0: 1, 101.0: 1})
    # Mosquitto keeps to Retain Handling 2: no stored copy even reached the bridge.
    assert dlq.records == []
    assert [b.stats.messages_received for b in restarts] == [2, 1]


async def test_stored_retained_copy_is_dead_lettered_not_counted(
    mqtt_broker: MosquittoBroker,
    kafka_bootstrap: str,
    kafka_topics: KafkaTopics,
    mqtt_prefix: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Fault injection: a broker that ignores Retain Handling sends its stored copy on subscribe, with the
    retain flag set (Mosquitto is told to, with Retain Handling 0)."""
    # raising=False: on a bridge without the setting, Mosquitto sends the stored copy all the same.
    monkeypatch.setattr(ingest.mqtt, "SUBSCRIBE_RETAIN_HANDLING", 0, raising=False)
    host, port = mqtt_broker.host, mqtt_broker.port
    settings = bridge_settings(
        host, port, kafka_bootstrap, kafka_topics.readings, kafka_topics.dlq, mqtt_prefix
    )
    topic = f"{mqtt_prefix}/water/r-3/telemetry"
    await publish(host, port, [(topic, _no_ts(3.0))], retain=True)  # before the bridge ever subscribed
    try:
        async with TopicReader(kafka_bootstrap, kafka_topics.readings) as readings:
            bridge = await _run_once(settings, host, port, readings, 100.0)
        async with TopicReader(kafka_bootstrap, kafka_topics.dlq) as dlq:
            await dlq.until(lambda: len(dlq.records) >= 1, 30, "the retained copy's dead letter")
    finally:
        await publish(host, port, [(topic, b"")], retain=True)
    assert readings.values() == [100.0]
    (letter,) = dlq.dead_letters()
    assert (letter.reason, letter.raw, letter.origin, letter.device_id) == (
        "retained",
        _no_ts(3.0),
        topic,
        "r-3",
    )
    assert bridge.stats.messages_acked == 2
    assert bridge.stats.rejected == {"retained": 1}

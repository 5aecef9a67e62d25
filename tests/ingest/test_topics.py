"""Every topic under the bridge's prefix is accounted for: telemetry is forwarded, anything else is a
``bad_topic`` dead letter, never an acknowledged message that silently goes nowhere."""

from __future__ import annotations

import pytest

from core.topics import telemetry_filter
from devstack.mosquitto import MosquittoBroker
from ingest.bridge import Bridge
from tests.conftest import KafkaTopics
from tests.ingest.support import (
    TopicReader,
    eventually,
    publish,
    reading_msg,
    wired_settings,
)

pytestmark = [pytest.mark.integration]


def test_subscription_covers_the_whole_prefix() -> None:
    assert telemetry_filter("city") == "city/#"
    assert telemetry_filter("city", "bridges") == "$share/bridges/city/#"


async def test_non_telemetry_topics_under_the_prefix_are_dead_lettered(
    mqtt_broker: MosquittoBroker, kafka_bootstrap: str, kafka_topics: KafkaTopics, mqtt_prefix: str
) -> None:
    settings = wired_settings(mqtt_broker, kafka_bootstrap, kafka_topics, mqtt_prefix)
    good_topic, body = reading_msg(mqtt_prefix, "pump-1", 1.0)
    wrong = [
        f"{mqtt_prefix}/environment/x/status",
        f"{mqtt_prefix}/environment/x/y/telemetry",
        f"{mqtt_prefix}/environment/telemetry",
        f"{mqtt_prefix}/status",
    ]
    async with (
        Bridge(settings) as bridge,
        TopicReader(kafka_bootstrap, kafka_topics.dlq) as dlq,
        TopicReader(kafka_bootstrap, kafka_topics.readings) as readings,
    ):
        await eventually(lambda: not bridge.not_ready_reasons(), 30, "the bridge to be ready")
        await publish(mqtt_broker.host, mqtt_broker.port, [*((t, body) for t in wrong), (good_topic, body)])
        await dlq.until(lambda: len(dlq.records) >= len(wrong), 30, "a dead letter per wrong topic")
        await readings.until(lambda: len(readings.records) >= 1, 30, "the good reading")
        await eventually(lambda: bridge.stats.messages_acked == len(wrong) + 1, 30, "every message acked")
        letters = dlq.dead_letters()
        assert sorted(d.origin for d in letters) == sorted(wrong)
        assert {d.reason for d in letters} == {"bad_topic"}
        assert all(d.raw == body for d in letters)
        assert bridge.stats.rejected["bad_topic"] == len(wrong)
        assert readings.values() == [1.0]

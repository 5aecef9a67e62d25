"""Kafka errors set the bridge's policy by their class: retry, dead-letter the record, or fail loudly."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

import httpx
import orjson
import pytest

from core.errors import BrokerRefused
from core.lifecycle import State
from core.types import RejectReason
from devstack.mosquitto import MosquittoBroker
from devstack.process import free_port
from ingest.bridge import Bridge
from tests.conftest import KafkaTopics
from tests.ingest.support import (
    TopicReader,
    bridge_command,
    eventually,
    publish,
    reading_msg,
    wired_settings,
)

pytestmark = [pytest.mark.integration]

ROOT = Path(__file__).resolve().parents[2]
MAX_REQUEST = 4096


def _big_message(prefix: str) -> tuple[str, bytes]:
    """A valid message of 300 readings: its envelope is far above MAX_REQUEST bytes."""
    readings = [{"metric": "voltage", "value": 200.0 + i / 10, "ts": 1.767e9 + i} for i in range(300)]
    return f"{prefix}/power/big-meter/telemetry", orjson.dumps({"readings": readings})


async def test_a_record_kafka_refuses_as_too_large_is_dead_lettered_and_the_acks_go_on(
    mqtt_broker: MosquittoBroker, kafka_bootstrap: str, kafka_topics: KafkaTopics, mqtt_prefix: str
) -> None:
    settings = wired_settings(
        mqtt_broker,
        kafka_bootstrap,
        kafka_topics,
        mqtt_prefix,
        kafka_max_request_bytes=MAX_REQUEST,
    )
    messages = [
        reading_msg(mqtt_prefix, "d", 1.0),
        _big_message(mqtt_prefix),
        reading_msg(mqtt_prefix, "d", 2.0),
    ]
    async with Bridge(settings) as bridge:
        await eventually(lambda: not bridge.not_ready_reasons(), 30, "the bridge to be ready")
        await publish(mqtt_broker.host, mqtt_broker.port, messages)
        # The messages behind the refused record are acknowledged: nothing waits on it.
        await eventually(lambda: bridge.stats.messages_acked == 3, 30, "every message acknowledged")
        assert bridge.in_flight == 0
        assert not bridge.not_ready_reasons()
        assert bridge.stats.rejected[RejectReason.RECORD_TOO_LARGE] == 1
    async with TopicReader(kafka_bootstrap, kafka_topics.readings) as readings:
        await readings.until(lambda: sorted(readings.values()) == [1.0, 2.0], 30, "the small readings")
    async with TopicReader(kafka_bootstrap, kafka_topics.dlq) as dlq:
        await dlq.until(lambda: len(dlq.records) == 1, 30, "the dead letter")
        (letter,) = dlq.dead_letters()
    assert (letter.reason, letter.device_id, letter.origin) == (
        "record_too_large",
        "big-meter",
        f"{mqtt_prefix}/power/big-meter/telemetry",
    )
    assert "MessageSizeTooLargeError" in letter.message
    assert "300 readings are not forwarded" in letter.message
    assert letter.raw.startswith(b'{"v":')  # the first bytes of the refused envelope
    assert len(letter.raw) == MAX_REQUEST // 8


async def test_kafka_refusing_the_bridge_for_good_fails_it_instead_of_retrying_forever(
    mqtt_broker: MosquittoBroker, kafka_bootstrap: str, kafka_topics: KafkaTopics, mqtt_prefix: str
) -> None:
    # Tansu answers the idempotent producer's InitProducerId with an error aiokafka does not call
    # retriable: no retry can help, so the bridge must fail, not wait for ever.
    settings = wired_settings(
        mqtt_broker,
        kafka_bootstrap,
        kafka_topics,
        mqtt_prefix,
        kafka_idempotence=True,
    )
    bridge = Bridge(settings)
    await bridge.start()
    try:
        with pytest.raises(BrokerRefused, match="UnknownError"):
            async with asyncio.timeout(60):
                await bridge.wait()
        assert bridge.state is State.FAILED
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{bridge.http_port}") as http:
            assert (await http.get("/healthz")).status_code == 503
            ready = await http.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["reasons"][0].startswith("failed: BrokerRefused"), ready.text
    finally:
        await bridge.stop()
    assert bridge.state is State.FAILED


def test_the_bridge_command_exits_non_zero_when_kafka_refuses_it(
    service_env: dict[str, str], kafka_topics: KafkaTopics, mqtt_prefix: str
) -> None:
    env = {
        **service_env,
        "CITYINGEST_KAFKA_IDEMPOTENCE": "true",
        "CITYINGEST_READINGS_TOPIC": kafka_topics.readings,
        "CITYINGEST_DLQ_TOPIC": kafka_topics.dlq,
        "CITYINGEST_MQTT_TOPIC_PREFIX": mqtt_prefix,
    }
    done = subprocess.run(
        bridge_command(free_port()),
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert done.returncode == 1, done.stderr
    assert "cityingest bridge: UnknownError" in done.stderr

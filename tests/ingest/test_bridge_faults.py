"""The bridge under faults: kill -9 and restart, Kafka down and back, MQTT broker restart."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import httpx
import pytest

from devstack.kafka import ensure_topics
from devstack.mosquitto import MosquittoBroker
from devstack.process import ChildProcess, free_port
from devstack.tansu import TansuBroker
from ingest.bridge import Bridge
from tests.conftest import KafkaTopics
from tests.ingest.support import (
    TopicReader,
    bridge_command,
    bridge_settings,
    eventually,
    gated_tansu,
    publish,
    reading_msg,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]


async def _readyz(port: int) -> int:
    try:
        async with httpx.AsyncClient(timeout=2) as http:
            return (await http.get(f"http://127.0.0.1:{port}/readyz")).status_code
    except httpx.TransportError:
        return 0


async def test_kill_9_mid_stream_then_restart_loses_nothing(
    service_env: dict[str, str],
    mqtt_broker: MosquittoBroker,
    kafka_bootstrap: str,
    kafka_topics: KafkaTopics,
    mqtt_prefix: str,
    tmp_path: Path,
) -> None:
    http_port = free_port()
    env = {
        **service_env,
        "CITYINGEST_MQTT_TOPIC_PREFIX": mqtt_prefix,
        "CITYINGEST_READINGS_TOPIC": kafka_topics.readings,
        "CITYINGEST_DLQ_TOPIC": kafka_topics.dlq,
        "CITYINGEST_CLIENT_ID": f"crash-{uuid.uuid4().hex[:8]}",
        "CITYINGEST_KAFKA_RETRY_BACKOFF_S": "0.2",
    }

    def launch(name: str) -> ChildProcess:
        proc = ChildProcess(
            name, bridge_command(http_port), log_path=tmp_path / f"{name}.log", env=env, cwd=ROOT
        )
        proc.start()
        return proc

    total, chunk = 6000, 100
    expected = {float(i) for i in range(total)}
    messages = [reading_msg(mqtt_prefix, f"dev-{i % 25}", float(i)) for i in range(total)]

    async def publish_steadily() -> None:
        for start in range(0, total, chunk):
            await publish(mqtt_broker.host, mqtt_broker.port, messages[start : start + chunk])
            await asyncio.sleep(0.02)

    first = launch("bridge-1")
    second: ChildProcess | None = None
    try:
        # The persistent session must exist before devices publish, or the broker has no one to queue for.
        await eventually(lambda: _ready_ok(http_port), 30, "the first bridge to be ready")
        publisher = asyncio.create_task(publish_steadily())
        async with TopicReader(kafka_bootstrap, kafka_topics.readings) as reader:
            await reader.until(lambda: len(reader.records) >= 1000, 60, "the first bridge to forward")
            first.kill()  # SIGKILL while devices keep publishing
            seen_at_kill = set(reader.values())
            await publisher  # every message was acknowledged by the broker to its device
            assert len(seen_at_kill) < total, "the kill must happen mid-stream"
            second = launch("bridge-2")
            await reader.until(lambda: set(reader.values()) >= expected, 90, "every reading after restart")
        assert set(reader.values()) == expected
        assert second.stop() == 0  # SIGTERM: a graceful stop
    finally:
        first.kill()
        first.wait_stopped()
        if second is not None:
            second.stop()


async def _ready_ok(port: int) -> bool:
    return await _readyz(port) == 200


def _stalled(bridge: Bridge) -> bool:
    return any(reason.startswith("acks: stalled") for reason in bridge.not_ready_reasons())


async def test_kafka_outage_stops_intake_reports_not_ready_and_resumes(
    mqtt_broker: MosquittoBroker, mqtt_prefix: str, tmp_path: Path
) -> None:
    # Kafka is reached through a gate, shut for the outage: the broker keeps its topics and records,
    # as a real Kafka cluster does. (Restarting Tansu instead loses them, and a producer that reconnects
    # before the test has re-created the topics gets records acknowledged by Tansu and then lost.)
    gate, tansu = await gated_tansu(tmp_path)
    readings, dlq = f"readings.{uuid.uuid4().hex[:8]}", f"dlq.{uuid.uuid4().hex[:8]}"
    window = 50
    settings = bridge_settings(
        mqtt_broker.host,
        mqtt_broker.port,
        tansu.bootstrap,
        readings,
        dlq,
        mqtt_prefix,
        max_in_flight=window,
        ack_stall_s=1.0,
    )
    try:
        await ensure_topics(tansu.bootstrap, {readings: 3, dlq: 1})
        async with Bridge(settings) as bridge:
            await eventually(lambda: not bridge.not_ready_reasons(), 30, "the bridge to be ready")
            await publish(
                mqtt_broker.host, mqtt_broker.port, [reading_msg(mqtt_prefix, "d", i) for i in range(20)]
            )
            await eventually(lambda: bridge.stats.messages_acked == 20, 30, "the first messages acked")

            await gate.shut()
            await eventually(lambda: "kafka: unreachable" in bridge.not_ready_reasons(), 30, "not ready")
            assert await _readyz(bridge.http_port) == 503
            outage = [reading_msg(mqtt_prefix, f"d{i % 7}", float(i)) for i in range(100, 400)]
            await publish(mqtt_broker.host, mqtt_broker.port, outage)  # the broker takes them for the bridge
            await eventually(lambda: bridge.in_flight == window, 30, "the in-flight window to fill")
            await asyncio.sleep(2)  # time in which an unbounded bridge would take the other 250
            assert bridge.stats.messages_received == 20 + window
            assert bridge.stats.messages_acked == 20
            assert bridge.in_flight == window
            # Messages wait and no ack goes out: the stall detector says so, whatever the cause.
            await eventually(lambda: _stalled(bridge), 30, "the ack stall to be reported")
            async with httpx.AsyncClient(timeout=2) as http:
                ready = await http.get(f"http://127.0.0.1:{bridge.http_port}/readyz")
            assert ready.status_code == 503
            assert any(r.startswith("acks: stalled") for r in ready.json()["reasons"]), ready.text

            await gate.open()
            await eventually(lambda: not bridge.not_ready_reasons(), 60, "ready again")
            async with TopicReader(tansu.bootstrap, readings) as reader:
                wanted = {float(i) for i in range(100, 400)}
                await reader.until(lambda: set(reader.values()) >= wanted, 60, "the outage's readings")
                # Nothing acknowledged before the outage was lost either.
                assert {float(i) for i in range(20)} <= set(reader.values())
            await eventually(lambda: bridge.stats.messages_acked == 320, 30, "every message acked")
            assert await _readyz(bridge.http_port) == 200
    finally:
        await gate.shut()
        tansu.stop()


async def test_mqtt_broker_restart_reconnects_and_resubscribes(
    kafka_bootstrap: str, kafka_topics: KafkaTopics, mqtt_prefix: str, tmp_path: Path
) -> None:
    broker = MosquittoBroker(tmp_path / "mosquitto", free_port())
    broker.start()
    settings = bridge_settings(
        broker.host, broker.port, kafka_bootstrap, kafka_topics.readings, kafka_topics.dlq, mqtt_prefix
    )
    try:
        async with Bridge(settings) as bridge:
            await eventually(lambda: not bridge.not_ready_reasons(), 30, "the bridge to be ready")
            await publish(
                broker.host, broker.port, [reading_msg(mqtt_prefix, "d", float(i)) for i in range(10)]
            )
            await eventually(lambda: bridge.stats.messages_acked == 10, 30, "the first messages acked")

            await asyncio.to_thread(broker.stop)
            await eventually(lambda: "mqtt: not connected" in bridge.not_ready_reasons(), 30, "not ready")
            await asyncio.to_thread(broker.start)
            await eventually(lambda: not bridge.not_ready_reasons(), 60, "reconnected and resubscribed")
            assert bridge.stats.mqtt_reconnects >= 1

            later = [reading_msg(mqtt_prefix, "d", float(i)) for i in range(10, 30)]
            await publish(broker.host, broker.port, later)
            async with TopicReader(kafka_bootstrap, kafka_topics.readings) as reader:
                wanted = {float(i) for i in range(30)}
                await reader.until(
                    lambda: set(reader.values()) >= wanted, 60, "readings from before and after"
                )
    finally:
        broker.stop()


async def test_bridge_waits_for_kafka_at_startup(
    mqtt_broker: MosquittoBroker, mqtt_prefix: str, tmp_path: Path
) -> None:
    port = free_port()
    tansu = TansuBroker(tmp_path, port)
    readings, dlq = f"readings.{uuid.uuid4().hex[:8]}", f"dlq.{uuid.uuid4().hex[:8]}"
    settings = bridge_settings(
        mqtt_broker.host, mqtt_broker.port, tansu.bootstrap, readings, dlq, mqtt_prefix
    )
    try:
        async with Bridge(settings) as bridge:
            await asyncio.sleep(1)
            assert "kafka: not connected yet" in bridge.not_ready_reasons()
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{bridge.http_port}") as http:
                assert (await http.get("/healthz")).status_code == 200  # alive, just waiting
                assert (await http.get("/readyz")).status_code == 503
            await asyncio.to_thread(tansu.start)
            await ensure_topics(tansu.bootstrap, {readings: 3, dlq: 1})
            await eventually(lambda: not bridge.not_ready_reasons(), 60, "ready once Kafka is up")
            await publish(mqtt_broker.host, mqtt_broker.port, [reading_msg(mqtt_prefix, "d", 7.0)])
            async with TopicReader(tansu.bootstrap, readings) as reader:
                await reader.until(lambda: reader.values() == [7.0], 30, "the reading")
    finally:
        tansu.stop()

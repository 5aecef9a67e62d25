"""Publishing through a real Mosquitto: every acknowledged message arrives, and the truth says so."""

from __future__ import annotations

import asyncio
import itertools
import json
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from core.errors import BrokerUnavailable
from devstack.mosquitto import MosquittoBroker
from devstack.process import free_port
from simulator.generate import Simulation, generate
from simulator.publisher import Publisher, serve
from simulator.settings import SimulatorSettings
from tests.simulator.conftest import small_city

pytestmark = pytest.mark.integration


class Subscriber:
    """A paho client recording every message under ``prefix``, in arrival order."""

    def __init__(self, broker: MosquittoBroker, prefix: str) -> None:
        self.received: list[tuple[str, bytes]] = []
        self._lock = threading.Lock()
        self._loop = asyncio.get_running_loop()
        self._subscribed = asyncio.Event()
        self._changed = asyncio.Event()
        self._client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=f"{prefix}-sub",
            protocol=MQTTProtocolVersion.MQTTv5,
        )
        self._client.on_connect = lambda c, *_: c.subscribe(f"{prefix}/+/+/telemetry", qos=1)
        self._client.on_subscribe = self._on_subscribe
        self._client.on_message = self._on_message
        self._broker = broker

    def _on_subscribe(self, *_: Any) -> None:
        self._loop.call_soon_threadsafe(self._subscribed.set)

    def _on_message(self, _client: mqtt.Client, _userdata: Any, message: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.received.append((message.topic, bytes(message.payload)))
        self._loop.call_soon_threadsafe(self._changed.set)

    async def __aenter__(self) -> Subscriber:
        await asyncio.to_thread(self._client.connect, self._broker.host, self._broker.port)
        self._client.loop_start()
        await self._subscribed.wait()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._client.disconnect()
        await asyncio.to_thread(self._client.loop_stop)

    async def wait_for(self, n: int) -> list[tuple[str, bytes]]:
        """Wait until at least ``n`` messages arrived (the test's timeout bounds the wait)."""
        while True:
            self._changed.clear()
            with self._lock:
                if len(self.received) >= n:
                    return list(self.received)
            await self._changed.wait()


def _settings(broker: MosquittoBroker, prefix: str, tmp_path: Path, **overrides: Any) -> SimulatorSettings:
    values: dict[str, Any] = {
        "mqtt_host": broker.host,
        "mqtt_port": broker.port,
        "mqtt_topic_prefix": prefix,
        "client_id": f"{prefix}-sim",
        "truth": tmp_path / "truth.json",
        "rate": 0,
    }
    return small_city(**{**values, **overrides})


async def test_every_message_arrives_and_matches_the_truth(
    mqtt_broker: MosquittoBroker, mqtt_prefix: str, tmp_path: Path
) -> None:
    # A small window, so publishing waits on acknowledgements many times.
    settings = _settings(mqtt_broker, mqtt_prefix, tmp_path, count=3000, max_in_flight=7)
    async with Subscriber(mqtt_broker, mqtt_prefix) as subscriber:
        await serve(settings)
        truth = json.loads((tmp_path / "truth.json").read_text(encoding="utf-8"))
        assert truth["messages"]["total"] == 3000
        received = await subscriber.wait_for(truth["messages"]["total"])
    expected = [(m.topic, m.payload) for m in generate(settings)]
    assert Counter(received) == Counter(expected)
    sim = Simulation(settings)
    offline = sim.new_truth()
    for message in sim.messages():
        offline.record(message)
    assert json.loads(json.dumps(offline.to_dict())) == truth


async def test_cancelled_run_writes_the_truth_of_what_was_acknowledged(
    mqtt_broker: MosquittoBroker, mqtt_prefix: str, tmp_path: Path
) -> None:
    settings = _settings(mqtt_broker, mqtt_prefix, tmp_path, count=None, rate=2000)
    async with Subscriber(mqtt_broker, mqtt_prefix) as subscriber:
        task = asyncio.create_task(serve(settings))
        await subscriber.wait_for(500)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        truth = json.loads((tmp_path / "truth.json").read_text(encoding="utf-8"))
        acknowledged = truth["messages"]["total"]
        assert acknowledged >= 500
        received = await subscriber.wait_for(acknowledged)
    # The broker acknowledges in order, so the acknowledged messages are the first ones generated.
    sim = Simulation(settings)
    prefix = [m for _, m in zip(range(acknowledged), sim.messages(), strict=False)]
    assert received[:acknowledged] == [(m.topic, m.payload) for m in prefix]
    offline = sim.new_truth()
    for message in prefix:
        offline.record(message)
    assert json.loads(json.dumps(offline.to_dict())) == truth


async def test_a_run_with_a_duration_ends_by_itself(
    mqtt_broker: MosquittoBroker, mqtt_prefix: str, tmp_path: Path
) -> None:
    settings = _settings(mqtt_broker, mqtt_prefix, tmp_path, count=None, rate=200, duration_s=0.5)
    await serve(settings)
    truth = json.loads((tmp_path / "truth.json").read_text(encoding="utf-8"))
    assert truth["messages"]["total"] > 0


async def test_unreachable_broker_is_reported(tmp_path: Path) -> None:
    settings = small_city(mqtt_host="127.0.0.1", mqtt_port=free_port(), truth=tmp_path / "t.json")
    with pytest.raises(BrokerUnavailable):
        async with Publisher(settings, lambda _m: None):
            pass
    with pytest.raises(BrokerUnavailable):
        await serve(settings)
    # Even a run that never connected leaves a (empty) truth behind.
    assert json.loads((tmp_path / "t.json").read_text(encoding="utf-8"))["messages"]["total"] == 0


@pytest.mark.slow
async def test_more_messages_than_mqtt_message_ids_arrive_intact(
    mqtt_broker: MosquittoBroker, mqtt_prefix: str, tmp_path: Path
) -> None:
    # paho numbers messages 1..65535: past that, only the capped window keeps ids from colliding.
    settings = _settings(mqtt_broker, mqtt_prefix, tmp_path, count=70_000, devices=200)
    async with Subscriber(mqtt_broker, mqtt_prefix) as subscriber:
        await serve(settings)
        truth = json.loads((tmp_path / "truth.json").read_text(encoding="utf-8"))
        assert truth["messages"]["total"] == 70_000
        received = await subscriber.wait_for(70_000)
    assert Counter(received) == Counter((m.topic, m.payload) for m in generate(settings))


@pytest.mark.slow
async def test_publishing_survives_a_broker_restart(tmp_path: Path) -> None:
    # A broker of its own: restarting the session's broker would disturb other tests.
    broker = MosquittoBroker(tmp_path / "mosquitto", free_port())
    await asyncio.to_thread(broker.start)
    try:
        acked: list[int] = []
        settings = _settings(broker, "restart", tmp_path, count=None, rate=1000)
        sim = Simulation(settings)
        messages = sim.messages()
        async with Publisher(settings, lambda m: acked.append(m.seq)) as publisher:
            for message in itertools.islice(messages, 300):
                await publisher.publish(message)
            await publisher.drain()
            await asyncio.to_thread(broker.stop)
            await asyncio.to_thread(broker.start)
            # Published while the broker is away or just back: paho keeps them and sends on reconnection.
            for message in itertools.islice(messages, 300):
                await publisher.publish(message)
            assert await publisher.drain(60)
        assert sorted(acked) == list(range(600))
    finally:
        await asyncio.to_thread(broker.stop)

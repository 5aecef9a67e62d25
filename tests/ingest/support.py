"""Helpers for the bridge's integration tests: a QoS 1 publisher, a topic reader, settings, polling."""

from __future__ import annotations

import asyncio
import sys
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import orjson
import paho.mqtt.client as paho
from aiokafka import AIOKafkaConsumer, TopicPartition
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from core.deadletter import DeadLetter, decode_dead_letter
from core.readings import Envelope, decode_envelope
from devstack.mosquitto import MosquittoBroker
from devstack.process import free_port
from devstack.tansu import TansuBroker
from ingest.settings import BridgeSettings
from tests.conftest import KafkaTopics


def bridge_settings(
    mqtt_host: str, mqtt_port: int, kafka_bootstrap: str, readings: str, dlq: str, prefix: str, **extra: Any
) -> BridgeSettings:
    """Settings of a bridge wired to the test's services, on a free HTTP port."""
    values: dict[str, Any] = {
        "mqtt_host": mqtt_host,
        "mqtt_port": mqtt_port,
        "kafka_bootstrap": kafka_bootstrap,
        "readings_topic": readings,
        "dlq_topic": dlq,
        "mqtt_topic_prefix": prefix,
        "kafka_idempotence": False,  # Tansu does not implement InitProducerId
        "http_port": 0,
        "client_id": f"bridge-{uuid.uuid4().hex[:8]}",
        "bridge_id": f"b-{uuid.uuid4().hex[:6]}",
        "kafka_retry_backoff_s": 0.2,
    }
    values.update(extra)
    return BridgeSettings(**values)


def bridge_command(http_port: int, *flags: str) -> list[str]:
    """The bridge command exactly as compose and Kubernetes run it (``cityingest bridge``, the image's
    entry point), started from this interpreter: ``python -m cli bridge`` with its HTTP flags."""
    return [
        sys.executable,
        "-m",
        "cli",
        "bridge",
        "--http-host",
        "127.0.0.1",
        "--http-port",
        str(http_port),
        *flags,
    ]


def wired_settings(
    broker: MosquittoBroker, kafka_bootstrap: str, topics: KafkaTopics, prefix: str, **extra: Any
) -> BridgeSettings:
    """:func:`bridge_settings` for the session's Mosquitto and Tansu and this test's topics and prefix."""
    return bridge_settings(
        broker.host, broker.port, kafka_bootstrap, topics.readings, topics.dlq, prefix, **extra
    )


def publish_all(
    host: str,
    port: int,
    messages: Sequence[tuple[str, bytes]],
    window: int = 200,
    properties: Properties | None = None,
    retain: bool = False,
    *,
    ca_file: str | None = None,
    login: tuple[str, str] | None = None,
) -> None:
    """Publish at QoS 1 and return once the broker acknowledged every message (blocking; run in a thread).

    With ``ca_file`` over TLS; with ``login`` as that user, whose name is also the client id (as devices').
    """
    client_id = login[0] if login is not None else f"pub-{uuid.uuid4().hex[:8]}"
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv5)
    if ca_file is not None:
        client.tls_set(ca_certs=ca_file)
    if login is not None:
        client.username_pw_set(*login)
    client.max_inflight_messages_set(window)
    client.max_queued_messages_set(0)
    client.connect(host, port)
    client.loop_start()
    try:
        infos = [
            client.publish(topic, payload, qos=1, retain=retain, properties=properties)
            for topic, payload in messages
        ]
        for info in infos:
            info.wait_for_publish(timeout=60)
            if not info.is_published():
                raise RuntimeError(f"message {info.mid} was not acknowledged by the broker")
    finally:
        client.disconnect()
        client.loop_stop()


def connect_clean(
    host: str,
    port: int,
    client_id: str,
    *,
    username: str | None = None,
    password: str | None = None,
    protocol: MQTTProtocolVersion = MQTTProtocolVersion.MQTTv5,
) -> bool:
    """Connect with ``client_id`` and a clean session (discarding any session kept under that id),
    then disconnect; whether the broker accepted the connection (blocking; run in a thread)."""
    v5 = protocol == MQTTProtocolVersion.MQTTv5
    client = paho.Client(
        CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=protocol,
        clean_session=None if v5 else True,
    )
    if username is not None:
        client.username_pw_set(username, password)
    accepted: list[bool] = []
    done = threading.Event()

    def on_connect(_c: paho.Client, _u: Any, _f: Any, rc: ReasonCode, _p: Properties | None) -> None:
        accepted.append(not rc.is_failure)
        done.set()

    client.on_connect = on_connect
    if v5:
        client.connect(host, port, clean_start=True)
    else:
        client.connect(host, port)
    client.loop_start()
    try:
        if not done.wait(10):
            raise RuntimeError(f"no CONNACK for client id {client_id!r}")
    finally:
        client.disconnect()
        client.loop_stop()
    return accepted[0]


def publish_qos0(host: str, port: int, topic: str, payload: bytes) -> None:
    """Publish one message at QoS 0 (blocking; run in a thread)."""
    client = paho.Client(
        CallbackAPIVersion.VERSION2, client_id=f"pub0-{uuid.uuid4().hex[:8]}", protocol=paho.MQTTv5
    )
    client.connect(host, port)
    client.loop_start()
    try:
        client.publish(topic, payload, qos=0).wait_for_publish(timeout=10)
    finally:
        client.disconnect()
        client.loop_stop()


async def publish(
    host: str,
    port: int,
    messages: Sequence[tuple[str, bytes]],
    properties: Properties | None = None,
    *,
    retain: bool = False,
    ca_file: str | None = None,
    login: tuple[str, str] | None = None,
) -> None:
    """:func:`publish_all` without blocking the event loop (the bridge under test runs on it)."""
    await asyncio.to_thread(
        lambda: publish_all(host, port, messages, 200, properties, retain, ca_file=ca_file, login=login)
    )


def reading_msg(prefix: str, device: str, value: float, domain: str = "water") -> tuple[str, bytes]:
    """One single-reading water_flow message whose value identifies it."""
    body = orjson.dumps({"metric": "water_flow", "value": value, "ts": "2026-01-01T00:00:00Z"})
    return f"{prefix}/{domain}/{device}/telemetry", body


class TopicReader:
    """Reads a whole topic from the beginning (no consumer group), accumulating what it saw."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.topic = topic
        self.records: list[Any] = []
        self._consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)

    async def __aenter__(self) -> TopicReader:
        await self._consumer.start()
        partitions = self._consumer.partitions_for_topic(self.topic)
        for _ in range(50):
            if partitions:
                break
            await asyncio.sleep(0.1)
            await self._consumer._client.force_metadata_update()
            partitions = self._consumer.partitions_for_topic(self.topic)
        tps = [TopicPartition(self.topic, p) for p in sorted(partitions or ())]
        self._consumer.assign(tps)
        await self._consumer.seek_to_beginning(*tps)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._consumer.stop()

    async def poll(self) -> None:
        """Fetch what arrived since the last poll."""
        batches = await self._consumer.getmany(timeout_ms=200, max_records=10_000)
        for records in batches.values():
            self.records.extend(records)

    async def until(self, done: Callable[[], bool], within_s: float, what: str) -> None:
        """Poll until ``done()``; fail with ``what`` after ``within_s`` seconds."""
        deadline = time.monotonic() + within_s
        while not done():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}; have {len(self.records)} records")
            await self.poll()

    def envelopes(self) -> list[Envelope]:
        """Every record decoded as a readings envelope."""
        return [decode_envelope(r.value) for r in self.records]

    def dead_letters(self) -> list[DeadLetter]:
        """Every record decoded as a dead letter."""
        return [decode_dead_letter(r.value) for r in self.records]

    def values(self) -> list[float]:
        """Every reading value of every envelope (values identify test messages)."""
        return [r.value for env in self.envelopes() for r in env.readings]


async def eventually(
    check: Callable[[], Awaitable[bool]] | Callable[[], bool], within_s: float, what: str
) -> None:
    """Wait until ``check()`` is true (it may be a coroutine function)."""
    deadline = time.monotonic() + within_s
    while True:
        result = check()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


class TcpGate:
    """A TCP forwarder from ``listen_port`` to ``target_port`` that can be shut (every connection cut,
    new ones refused) and opened again: a network outage of a service that keeps its state."""

    def __init__(self, listen_port: int, target_port: int, host: str = "127.0.0.1") -> None:
        self.host = host
        self.listen_port = listen_port
        self.target_port = target_port
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def open(self) -> None:
        """Accept and forward connections."""
        self._server = await asyncio.start_server(self._serve, self.host, self.listen_port)

    async def shut(self) -> None:
        """Refuse new connections and cut the open ones."""
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            target_r, target_w = await asyncio.open_connection(self.host, self.target_port)
        except OSError:
            client_w.transport.abort()
            return
        self._writers.update((client_w, target_w))

        async def pipe(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            try:
                while data := await r.read(65536):
                    w.write(data)
                    await w.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                w.transport.abort()

        await asyncio.gather(pipe(client_r, target_w), pipe(target_r, client_w))
        self._writers.difference_update((client_w, target_w))


async def gated_tansu(directory: Path) -> tuple[TcpGate, TansuBroker]:
    """Tansu started in ``directory`` and reached only through an open :class:`TcpGate` (which it
    advertises): shutting the gate is a Kafka outage in which the broker keeps its topics and records,
    as a real Kafka cluster does. The caller stops both."""
    gate = TcpGate(free_port(), free_port())
    tansu = TansuBroker(directory, gate.target_port, advertised_port=gate.listen_port)
    tansu.start()
    await gate.open()
    return gate, tansu

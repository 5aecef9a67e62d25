"""The bridge connects to Mosquitto over TLS, with a client certificate, without losing its asyncio path."""

from __future__ import annotations

import asyncio
import signal
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest
import trustme

from devstack.mosquitto import MOSQUITTO
from devstack.process import ChildProcess, chown_tree, free_port, service_user
from ingest.bridge import Bridge
from tests.conftest import KafkaTopics
from tests.ingest.support import TopicReader, bridge_settings, eventually, publish, reading_msg
from tests.secured_broker import BRIDGE_USERNAME, SecuredBroker, secured_broker

pytestmark = [pytest.mark.integration]

__all__ = ["secured_broker"]  # the fixture, shared with tests/devstack/test_secured_broker.py

HOST = "127.0.0.1"


@dataclass(frozen=True)
class TlsBroker:
    """A Mosquitto with a plain listener (for the test's publisher) and a TLS one requiring client certs."""

    plain_port: int
    tls_port: int
    ca: trustme.CA
    files: Path

    def client_files(self, name: str, ca: trustme.CA | None = None) -> tuple[str, str]:
        """A client certificate chain and key for ``name`` signed by ``ca`` (default: the broker's CA)."""
        cert = (ca or self.ca).issue_cert(f"{name}@cityingest.test")
        chain, key = self.files / f"{name}.pem", self.files / f"{name}.key"
        cert.private_key_pem.write_to_path(str(key))
        with open(chain, "wb") as out:
            for blob in cert.cert_chain_pems:
                out.write(blob.bytes())
        return str(chain), str(key)


@pytest.fixture(scope="module")
def tls_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsBroker]:
    files = tmp_path_factory.mktemp("mqtt-tls")
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(files / "ca.pem"))
    server = ca.issue_cert(HOST, "localhost")
    server.private_key_pem.write_to_path(str(files / "server.key"))
    with open(files / "server.pem", "wb") as out:
        for blob in server.cert_chain_pems:
            out.write(blob.bytes())
    plain, tls = free_port(), free_port()
    conf = files / "mosquitto.conf"
    conf.write_text(
        "\n".join(
            [
                "per_listener_settings false",
                "allow_anonymous true",
                "persistence false",
                "max_queued_messages 0",
                "log_dest stdout",
                f"listener {plain} {HOST}",
                f"listener {tls} {HOST}",
                f"cafile {files / 'ca.pem'}",
                f"certfile {files / 'server.pem'}",
                f"keyfile {files / 'server.key'}",
                "require_certificate true",
                "",
            ]
        ),
        encoding="utf-8",
    )
    user = service_user("mosquitto")
    chown_tree(files, user)
    proc = ChildProcess("mosquitto-tls", [MOSQUITTO, "-c", str(conf)], log_path=files / "log", user=user)
    proc.start_listening(HOST, tls, 30)
    try:
        yield TlsBroker(plain, tls, ca, files)
    finally:
        proc.stop(signal.SIGTERM, 20)


async def test_bridge_over_tls_with_a_client_certificate(
    tls_broker: TlsBroker, kafka_bootstrap: str, kafka_topics: KafkaTopics, mqtt_prefix: str
) -> None:
    cert, key = tls_broker.client_files("bridge")
    settings = bridge_settings(
        HOST,
        tls_broker.tls_port,
        kafka_bootstrap,
        kafka_topics.readings,
        kafka_topics.dlq,
        mqtt_prefix,
        mqtt_tls=True,
        mqtt_ca_file=str(tls_broker.files / "ca.pem"),
        mqtt_cert_file=cert,
        mqtt_key_file=key,
    )
    messages = [reading_msg(mqtt_prefix, f"pump-{i % 7}", float(i)) for i in range(3_000)]
    async with (
        Bridge(settings) as bridge,
        TopicReader(kafka_bootstrap, kafka_topics.readings) as readings,
    ):
        await eventually(lambda: not bridge.not_ready_reasons(), 30, "the bridge to be ready over TLS")
        await publish(HOST, tls_broker.plain_port, messages)
        await readings.until(lambda: len(readings.values()) >= len(messages), 60, "every reading")
        await eventually(lambda: bridge.stats.messages_acked == len(messages), 30, "every message acked")
    assert sorted(readings.values()) == [float(i) for i in range(len(messages))]


async def test_bridge_refuses_a_broker_signed_by_another_ca(
    tls_broker: TlsBroker, kafka_bootstrap: str, kafka_topics: KafkaTopics, mqtt_prefix: str
) -> None:
    other = trustme.CA()
    other.cert_pem.write_to_path(str(tls_broker.files / "other-ca.pem"))
    cert, key = tls_broker.client_files("bridge-2")
    settings = bridge_settings(
        HOST,
        tls_broker.tls_port,
        kafka_bootstrap,
        kafka_topics.readings,
        kafka_topics.dlq,
        mqtt_prefix,
        mqtt_tls=True,
        mqtt_ca_file=str(tls_broker.files / "other-ca.pem"),
        mqtt_cert_file=cert,
        mqtt_key_file=key,
    )
    async with Bridge(settings) as bridge:
        await eventually(lambda: bridge.stats.kafka_errors == 0 and bridge._kafka_reachable, 30, "Kafka")
        await eventually(lambda: "mqtt: not connected" in bridge.not_ready_reasons(), 5, "not ready")
        assert bridge.stats.mqtt_connects == 0


async def test_broker_refuses_a_client_certificate_of_another_ca(
    tls_broker: TlsBroker, kafka_bootstrap: str, kafka_topics: KafkaTopics, mqtt_prefix: str
) -> None:
    cert, key = tls_broker.client_files("intruder", ca=trustme.CA())
    settings = bridge_settings(
        HOST,
        tls_broker.tls_port,
        kafka_bootstrap,
        kafka_topics.readings,
        kafka_topics.dlq,
        mqtt_prefix,
        mqtt_tls=True,
        mqtt_ca_file=str(tls_broker.files / "ca.pem"),
        mqtt_cert_file=cert,
        mqtt_key_file=key,
    )
    async with Bridge(settings) as bridge:
        await eventually(lambda: bridge._kafka_reachable, 30, "Kafka")
        await eventually(lambda: "mqtt: not connected" in bridge.not_ready_reasons(), 5, "not ready")
        assert bridge.stats.mqtt_connects == 0


def _batch(prefix: str, device: str, first: int, count: int) -> tuple[str, bytes]:
    readings = [
        {"metric": "water_flow", "value": float(first + i), "ts": f"2026-01-01T00:00:{i % 60:02d}Z"}
        for i in range(count)
    ]
    return f"{prefix}/water/{device}/telemetry", orjson.dumps({"readings": readings})


async def test_bridge_over_tls_with_its_credentials_loses_nothing(
    secured_broker: SecuredBroker, kafka_bootstrap: str, kafka_topics: KafkaTopics, mqtt_prefix: str
) -> None:
    """Thousands of messages, many spanning several TLS records (16 KiB each), through the bridge's own
    socket loop over TLS: a byte left decrypted in the SSL object (``pending()``) would stall or lose them."""
    secured_broker.admin(
        [
            {
                "command": "addRoleACL",
                "rolename": "cityingest-bridge",
                "acltype": "subscribePattern",
                "topic": f"$share/+/{mqtt_prefix}/#",
                "allow": True,
            }
        ]
    )
    devices = {f"tls-meter-{i}-{mqtt_prefix}": uuid.uuid4().hex for i in range(3)}
    for device, password in devices.items():
        secured_broker.add_device(device, password, prefix=mqtt_prefix)
    sizes = [1, 7, 40, 120, 400]  # readings per message: ~60 bytes to ~25 KiB
    batches: dict[str, list[tuple[str, bytes]]] = {device: [] for device in devices}
    value = 0
    for n in range(1_500):
        device = list(devices)[n % len(devices)]
        size = sizes[n % len(sizes)]
        batches[device].append(_batch(mqtt_prefix, device, value, size))
        value += size
    settings = bridge_settings(
        HOST,
        secured_broker.port,
        kafka_bootstrap,
        kafka_topics.readings,
        kafka_topics.dlq,
        mqtt_prefix,
        mqtt_tls=True,
        mqtt_ca_file=str(secured_broker.certs.ca_cert),
        mqtt_username=BRIDGE_USERNAME,
        mqtt_password=secured_broker.bridge_password,
        shared_group="tls-bridges",
    )
    async with (
        Bridge(settings) as bridge,
        TopicReader(kafka_bootstrap, kafka_topics.readings) as readings,
    ):
        await eventually(lambda: not bridge.not_ready_reasons(), 30, "the bridge to be ready over TLS")
        await asyncio.gather(
            *(
                publish(
                    HOST,
                    secured_broker.port,
                    batches[device],
                    ca_file=str(secured_broker.certs.ca_cert),
                    login=(device, password),
                )
                for device, password in devices.items()
            )
        )
        await readings.until(lambda: len(readings.values()) >= value, 120, "every reading")
        await eventually(lambda: bridge.stats.messages_acked == 1_500, 30, "every message acked")
    assert sorted(readings.values()) == [float(i) for i in range(value)]

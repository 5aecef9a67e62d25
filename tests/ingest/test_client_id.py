"""The bridge's MQTT client id: nobody who can work it out may wipe the messages queued for the bridge.

Connecting with a client id and a clean session discards the session the broker keeps under that id,
with every QoS 1 message queued in it, each already acknowledged to its device.
"""

from __future__ import annotations

import asyncio
import socket
import uuid

import pydantic
import pytest
from paho.mqtt.enums import MQTTProtocolVersion

from devstack.mosquitto import MosquittoBroker
from ingest.bridge import Bridge
from ingest.settings import BridgeSettings, derive_client_id, guessable_client_id
from tests.conftest import KafkaTopics
from tests.ingest.support import (
    TopicReader,
    connect_clean,
    eventually,
    publish,
    reading_msg,
    wired_settings,
)

pytestmark = [pytest.mark.integration]

SECRET = "f" * 64


def _as_dev_stack_runs_it(
    base: BridgeSettings, monkeypatch: pytest.MonkeyPatch, secret: str
) -> BridgeSettings:
    """The settings `cityingest dev` gives its bridge: --bridge-id dev-bridge and the state's secret."""
    monkeypatch.setenv("CITYINGEST_MQTT_CLIENT_ID_SECRET", secret)
    values = base.model_dump(exclude={"client_id", "bridge_id", "mqtt_client_id_secret"})
    return BridgeSettings(**values, bridge_id="dev-bridge")


async def test_outsider_with_a_guessable_client_id_cannot_wipe_the_backlog(
    mqtt_broker: MosquittoBroker,
    kafka_bootstrap: str,
    kafka_topics: KafkaTopics,
    mqtt_prefix: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    base = wired_settings(mqtt_broker, kafka_bootstrap, kafka_topics, mqtt_prefix)
    settings = _as_dev_stack_runs_it(base, monkeypatch, uuid.uuid4().hex * 2)
    # The bridge's persistent session must exist before devices publish, or nothing is queued for it.
    async with Bridge(settings) as bridge:
        await eventually(lambda: not bridge.not_ready_reasons(), 30, "the bridge to be ready")
    total = 300
    await publish(
        mqtt_broker.host,
        mqtt_broker.port,
        [reading_msg(mqtt_prefix, f"dev-{i % 7}", float(i)) for i in range(total)],
    )
    # Every id an outsider can know: the old default, and the documented pattern without the secret.
    guesses = [guessable_client_id(socket.gethostname()), guessable_client_id(settings.bridge_id)]
    assert settings.client_id not in guesses
    for guess in guesses:
        for protocol in (MQTTProtocolVersion.MQTTv5, MQTTProtocolVersion.MQTTv311):
            assert await asyncio.to_thread(
                connect_clean, mqtt_broker.host, mqtt_broker.port, guess, protocol=protocol
            )
    async with Bridge(settings) as bridge, TopicReader(kafka_bootstrap, kafka_topics.readings) as reader:
        expected = {float(i) for i in range(total)}
        await reader.until(lambda: set(reader.values()) >= expected, 60, "the backlog queued for the bridge")
    assert sorted(reader.values()) == sorted(expected)


def test_client_id_is_stable_secret_derived_and_distinct_per_replica(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CITYINGEST_CLIENT_ID", raising=False)
    monkeypatch.setenv("CITYINGEST_MQTT_CLIENT_ID_SECRET", SECRET)
    one = BridgeSettings(bridge_id="bridge-0")
    assert (
        one.client_id
        == BridgeSettings(bridge_id="bridge-0").client_id
        == derive_client_id("bridge-0", SECRET)
    )
    assert one.client_id.startswith("cityingest-bridge-bridge-0-")
    assert BridgeSettings(bridge_id="bridge-1").client_id != one.client_id
    assert derive_client_id("bridge-0", SECRET[:-1] + "e") != one.client_id
    # The default bridge id (hostname-pid) changes on every start: the id then follows the host name.
    assert BridgeSettings().client_id == derive_client_id(socket.gethostname(), SECRET)
    # An explicit client id is the operator's own secret.
    assert BridgeSettings(client_id="my-own-secret-id").client_id == "my-own-secret-id"


def test_guessable_client_id_is_refused_when_the_broker_asks_for_a_username(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("CITYINGEST_CLIENT_ID", "CITYINGEST_MQTT_CLIENT_ID_SECRET"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(pydantic.ValidationError, match="CITYINGEST_MQTT_CLIENT_ID_SECRET"):
        BridgeSettings(mqtt_username="bridge", mqtt_password="pw")  # noqa: S106 - a test value
    with pytest.raises(pydantic.ValidationError, match="at least 32"):
        BridgeSettings(mqtt_client_id_secret=pydantic.SecretStr("short"))
    # Without authentication any client may connect anyway: a warning, not a refusal.
    assert BridgeSettings(bridge_id="b").client_id == guessable_client_id("b")

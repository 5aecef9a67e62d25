"""The simulator with --credentials-from-api: each device publishes on its own login, issued by the API."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr

from api.app import serve as serve_api
from api.settings import ApiSettings
from devstack.process import free_port
from simulator.publisher import serve
from simulator.settings import SimulatorSettings
from tests.dynsec_support import DynsecBroker, MqttClient, running_broker
from tests.simulator.test_register import REGISTER_SCOPES, city, key_file

pytestmark = pytest.mark.integration


@pytest.fixture
def broker(tmp_path: Path, mqtt_prefix: str) -> Iterator[DynsecBroker]:
    with running_broker(tmp_path / "mosquitto", mqtt_prefix) as b:
        yield b


@pytest.fixture
async def api(database_url: str, broker: DynsecBroker, mqtt_prefix: str) -> AsyncIterator[str]:
    """The real API with dynamic security on, on a free port."""
    port = free_port()
    settings = ApiSettings(
        database_url=database_url,
        kafka_bootstrap="127.0.0.1:9",
        api_port=port,
        mqtt_port=broker.port,
        mqtt_host="127.0.0.1",
        mqtt_topic_prefix=mqtt_prefix,
        dynsec_enabled=True,
        dynsec_password=SecretStr(broker.admin_password),
    )
    task = asyncio.create_task(serve_api(settings))
    url = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(base_url=url) as client:
            while True:
                with contextlib.suppress(httpx.TransportError):
                    ready = await client.get("/readyz")
                    if ready.status_code == 200 and ready.json().get("device_credentials") == "connected":
                        break
                await asyncio.sleep(0.05)
        yield url
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_each_device_publishes_with_its_own_credentials_and_only_acknowledged_messages_count(
    api: str, database_url: str, tmp_path: Path, broker: DynsecBroker, mqtt_prefix: str
) -> None:
    listener = MqttClient(broker.port, "cityingest-bridge", broker.bridge_password, "bridge-sim-test")
    assert not listener.connect().is_failure
    assert not listener.subscribe(f"{mqtt_prefix}/#")[0].is_failure
    settings = city(
        api,
        await key_file(database_url, tmp_path / "key", REGISTER_SCOPES),
        mqtt_host="127.0.0.1",
        mqtt_port=broker.port,
        mqtt_topic_prefix=mqtt_prefix,
        truth=tmp_path / "truth.json",
        count=400,
        rate=0,
        credentials_from_api=True,
    )
    await serve(settings)
    truth = json.loads((tmp_path / "truth.json").read_text(encoding="utf-8"))
    # A round trip through the broker after the run: every delivered message has reached the listener.
    assert not listener.subscribe(f"{mqtt_prefix}/x")[0].is_failure
    listener.close()
    received = listener.messages
    registered = set(truth["registered"])
    assert truth["messages"]["total"] == len(received)
    assert 0 < len(received) < 400  # unregistered devices publish nothing, bad topics are refused
    # The simulator has no account of its own (and the broker no anonymous access): only the devices'
    # logins can have published what arrived, from every registered device.
    assert settings.mqtt_username is None
    assert {m.topic.split("/")[2] for m in received} == registered


def test_the_dev_stack_switch_has_its_simulator_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CITYINGEST_SIM_CREDENTIALS_FROM_API", "true")
    assert SimulatorSettings(register_url="http://api", api_key=SecretStr("k")).credentials_from_api
    monkeypatch.setenv("CITYINGEST_CREDENTIALS_FROM_API", "false")
    assert not SimulatorSettings(register_url="http://api", api_key=SecretStr("k")).credentials_from_api
    monkeypatch.delenv("CITYINGEST_CREDENTIALS_FROM_API")
    with pytest.raises(ValueError, match="--credentials-from-api needs --register-url"):
        SimulatorSettings()

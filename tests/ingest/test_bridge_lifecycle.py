"""The bridge's lifecycle: one start, an idempotent and cancellation-safe stop, no task dying unnoticed."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaProducer

from core.errors import BrokerUnavailable
from core.lifecycle import State
from devstack.mosquitto import MosquittoBroker, broker_config
from devstack.process import free_port
from ingest.bridge import Bridge
from ingest.kafka import kafka_reachable
from ingest.paho_client import AsyncioPahoClient
from ingest.settings import BridgeSettings
from tests.conftest import KafkaTopics
from tests.ingest.support import bridge_settings, eventually, publish, reading_msg, wired_settings

pytestmark = [pytest.mark.integration]


@pytest.fixture
def settings(
    mqtt_broker: MosquittoBroker, kafka_bootstrap: str, kafka_topics: KafkaTopics, mqtt_prefix: str
) -> BridgeSettings:
    """A bridge wired to the session's Mosquitto and Tansu."""
    return wired_settings(mqtt_broker, kafka_bootstrap, kafka_topics, mqtt_prefix)


async def _status(port: int, path: str) -> int:
    async with httpx.AsyncClient(timeout=2) as http:
        return (await http.get(f"http://127.0.0.1:{port}{path}")).status_code


async def _fails_loudly(bridge: Bridge, error: type[BaseException], match: str) -> None:
    """The bridge failed: /healthz 503, /readyz not ready with the reason, wait() raises the error."""
    await eventually(lambda: bridge.state is State.FAILED, 30, "the bridge to fail")
    assert await _status(bridge.http_port, "/healthz") == 503
    assert await _status(bridge.http_port, "/readyz") == 503
    assert bridge.not_ready_reasons()[0].startswith("failed: ")
    with pytest.raises(error, match=match):
        await bridge.wait()


async def test_a_probe_that_raises_fails_the_bridge_loudly(
    settings: BridgeSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = 0

    async def broken_once(producer: AIOKafkaProducer) -> bool:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise RuntimeError("injected probe bug")
        return await kafka_reachable(producer)

    monkeypatch.setattr("ingest.bridge.kafka_reachable", broken_once)
    async with Bridge(settings) as bridge:
        await eventually(lambda: not bridge.not_ready_reasons(), 30, "the bridge to be ready")
        await _fails_loudly(bridge, RuntimeError, "injected probe bug")
    assert bridge.state is State.FAILED


async def test_the_mqtt_keepalive_dying_fails_the_bridge_loudly(
    settings: BridgeSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(_self: AsyncioPahoClient) -> object:
        raise BrokerUnavailable("injected keep-alive failure")

    async with Bridge(settings) as bridge:
        await eventually(lambda: not bridge.not_ready_reasons(), 30, "the bridge to be ready")
        monkeypatch.setattr(AsyncioPahoClient, "loop_misc", broken)
        await _fails_loudly(bridge, BrokerUnavailable, "injected keep-alive failure")


async def test_a_second_start_is_refused(settings: BridgeSettings) -> None:
    async with Bridge(settings) as bridge:
        with pytest.raises(RuntimeError, match="cannot start: it is running"):
            await bridge.start()
        await eventually(lambda: not bridge.not_ready_reasons(), 30, "the bridge to be ready")
    with pytest.raises(RuntimeError, match="cannot start: it is stopped"):
        await bridge.start()


async def test_stop_is_idempotent(
    settings: BridgeSettings, mqtt_broker: MosquittoBroker, mqtt_prefix: str
) -> None:
    bridge = Bridge(settings)
    await bridge.start()
    await eventually(lambda: not bridge.not_ready_reasons(), 30, "the bridge to be ready")
    await publish(mqtt_broker.host, mqtt_broker.port, [reading_msg(mqtt_prefix, "d", 1.0)])
    await eventually(lambda: bridge.stats.messages_acked == 1, 30, "the message acknowledged")
    port = bridge.http_port
    await asyncio.gather(bridge.stop(), bridge.stop())
    await bridge.stop()
    assert bridge.state is State.STOPPED
    await bridge.wait()  # a stopped bridge has nothing to report
    with pytest.raises(httpx.ConnectError):
        await _status(port, "/healthz")


async def test_stop_of_a_bridge_never_started_is_safe(settings: BridgeSettings) -> None:
    bridge = Bridge(settings)
    await bridge.stop()
    assert bridge.state is State.STOPPED
    with pytest.raises(RuntimeError, match="cannot start: it is stopped"):
        await bridge.start()


async def test_a_cancelled_stop_still_releases_everything(settings: BridgeSettings) -> None:
    bridge = Bridge(settings)
    await bridge.start()
    await eventually(lambda: not bridge.not_ready_reasons(), 30, "the bridge to be ready")
    port = bridge.http_port
    stopping = asyncio.create_task(bridge.stop())
    await asyncio.sleep(0)
    stopping.cancel()
    with pytest.raises(asyncio.CancelledError):
        await stopping
    # The cancellation went on only after everything was released: nothing is left half-closed.
    assert bridge.state is State.STOPPED
    with pytest.raises(httpx.ConnectError):
        await _status(port, "/healthz")
    await bridge.stop()  # and stopping again is a no-op


async def test_a_broker_refusing_the_bridge_is_logged_and_retried_with_backoff(
    kafka_bootstrap: str,
    kafka_topics: KafkaTopics,
    mqtt_prefix: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    def no_anonymous(*args: Any, **kwargs: Any) -> str:
        return broker_config(*args, **kwargs).replace("allow_anonymous true", "allow_anonymous false")

    monkeypatch.setattr("devstack.mosquitto.broker_config", no_anonymous)
    broker = MosquittoBroker(tmp_path / "mosquitto", free_port())
    broker.start()
    settings = bridge_settings(
        broker.host,
        broker.port,
        kafka_bootstrap,
        kafka_topics.readings,
        kafka_topics.dlq,
        mqtt_prefix,
        mqtt_username="bridge",
        mqtt_password="wrong",  # noqa: S106 -- a wrong one on purpose
    )
    try:
        with caplog.at_level(logging.ERROR, logger="ingest.mqtt"):
            async with Bridge(settings) as bridge:
                await eventually(lambda: len(_refusals(caplog)) >= 3, 30, "three refused connections")
                assert bridge.state is State.RUNNING  # alive: a fixed password or ACL lets it in
                assert await _status(bridge.http_port, "/healthz") == 200
                reasons = bridge.not_ready_reasons()
                assert "mqtt: refused by the broker: Not authorized (135)" in reasons, reasons
        refusals = _refusals(caplog)
        assert "Not authorized (135)" in refusals[0].getMessage()
        # Never a tight loop: each attempt waits twice as long as the one before.
        assert [r.args[-1] for r in refusals[:3]] == [0.2, 0.4, 0.8]  # type: ignore[index]
    finally:
        broker.stop()


def _refusals(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if "refused the bridge" in r.getMessage()]

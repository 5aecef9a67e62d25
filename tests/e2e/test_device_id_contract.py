"""The device id limit is one contract (core.types.MAX_DEVICE_ID_LENGTH): an id of exactly that length
passes every stage (bridge, Kafka, consumer, store, registry, API), one character more is refused by the
first stage it meets."""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg
import pytest

from api.app import create_app
from api.auth import Scope
from api.keys import create_api_key
from api.settings import ApiSettings
from core.types import MAX_DEVICE_ID_LENGTH
from devstack.mosquitto import MosquittoBroker
from ingest.bridge import Bridge
from tests.api.conftest import started
from tests.conftest import KafkaTopics
from tests.consumers.harness import ConsumerProcess, consumer_env
from tests.ingest.support import (
    TopicReader,
    eventually,
    publish,
    reading_msg,
    wired_settings,
)

pytestmark = [pytest.mark.e2e, pytest.mark.integration, pytest.mark.timeout(180)]

LONGEST = "d" * (MAX_DEVICE_ID_LENGTH - 1) + "x"
TOO_LONG = LONGEST + "y"


async def _stored(dsn: str, device: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM readings WHERE device_id = $1", device))
    finally:
        await conn.close()


async def test_longest_device_id_passes_every_stage_and_a_longer_one_is_refused_first(
    mqtt_broker: MosquittoBroker,
    kafka_bootstrap: str,
    kafka_topics: KafkaTopics,
    mqtt_prefix: str,
    database_url: str,
    tmp_path: Path,
) -> None:
    settings = wired_settings(mqtt_broker, kafka_bootstrap, kafka_topics, mqtt_prefix)
    good_topic, body = reading_msg(mqtt_prefix, LONGEST, 7.5)
    long_topic, _ = reading_msg(mqtt_prefix, TOO_LONG, 8.5)

    # Bridge: the longest id is forwarded; the longer one is refused here, the first stage.
    async with (
        Bridge(settings) as bridge,
        TopicReader(kafka_bootstrap, kafka_topics.readings) as readings,
        TopicReader(kafka_bootstrap, kafka_topics.dlq) as dlq,
    ):
        await eventually(lambda: not bridge.not_ready_reasons(), 30, "the bridge to be ready")
        await publish(mqtt_broker.host, mqtt_broker.port, [(good_topic, body), (long_topic, body)])
        await eventually(lambda: bridge.stats.messages_acked == 2, 30, "both messages acknowledged")
        await readings.until(lambda: len(readings.records) >= 1, 30, "the envelope")
        await dlq.until(lambda: len(dlq.records) >= 1, 30, "the dead letter")
    assert [env.device_id for env in readings.envelopes()] == [LONGEST]
    (letter,) = dlq.dead_letters()
    assert (letter.reason, letter.origin) == ("bad_topic", long_topic)

    # Consumer and store: the envelope of the longest id is stored.
    env = consumer_env(
        dsn=database_url,
        bootstrap=kafka_bootstrap,
        topics=kafka_topics,
        consumer_id="contract",
    )
    consumer = ConsumerProcess(env, tmp_path / "consumer.log")
    consumer.start()
    try:
        deadline = asyncio.get_running_loop().time() + 90
        while await _stored(database_url, LONGEST) < 1:
            assert consumer.exit_code() is None, consumer.log()
            assert asyncio.get_running_loop().time() < deadline, consumer.log()
            await asyncio.sleep(0.3)
    finally:
        assert consumer.terminate() == 0, consumer.log()

    # Registry and API: the longest id is registered and served; the longer one is refused.
    key = await create_api_key(database_url, "contract", [s.value for s in Scope])
    auth = {"Authorization": f"Bearer {key}"}
    app = create_app(
        ApiSettings(database_url=database_url, kafka_bootstrap="127.0.0.1:9", kafka_timeout_s=1.0)
    )
    async for client in started(app):
        put = await client.put(f"/v1/devices/{LONGEST}", json={"domain": "water"}, headers=auth)
        assert put.status_code in (200, 201), put.text
        refused = await client.put(f"/v1/devices/{TOO_LONG}", json={"domain": "water"}, headers=auth)
        assert refused.status_code == 422, refused.text
        window = {"metric": "water_flow", "bucket": "raw"}
        window |= {"start": "2025-12-31T00:00:00Z", "end": "2026-01-02T00:00:00Z"}
        series = await client.get("/v1/series", params={"device_id": LONGEST, **window}, headers=auth)
        assert series.status_code == 200, series.text
        assert [p["mean"] for p in series.json()["items"]] == [7.5]
        too_long = await client.get("/v1/series", params={"device_id": TOO_LONG, **window}, headers=auth)
        assert too_long.status_code == 422, too_long.text

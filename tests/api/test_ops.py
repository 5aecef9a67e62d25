"""Consumer lag against a real Kafka-protocol broker, Prometheus metrics, the ``cityingest api`` process."""

from __future__ import annotations

import asyncio
import os
import sys
from datetime import UTC, datetime

import httpx
import pytest
from aiokafka import AIOKafkaProducer

from api.app import create_app
from api.ops.kafka import end_offsets
from api.settings import ApiSettings
from devstack.process import free_port
from tests.api.conftest import apply, burst, envelope, started
from tests.conftest import KafkaTopics
from tests.consumers import harness

pytestmark = pytest.mark.integration


async def produce(bootstrap: str, topic: str, partition: int, n: int) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=False, acks="all")
    await producer.start()
    try:
        for i in range(n):
            await producer.send_and_wait(topic, f"r{i}".encode(), partition=partition)
    finally:
        await producer.stop()


async def test_lag_per_partition(
    database_url: str, kafka_bootstrap: str, kafka_topics: KafkaTopics, auth: dict[str, str]
) -> None:
    topic = kafka_topics.readings
    await produce(kafka_bootstrap, topic, 0, 7)
    await produce(kafka_bootstrap, topic, 1, 3)
    env = envelope("d1", "water", [("water_flow", datetime(2024, 1, 1, tzinfo=UTC), 1.0, 0)])
    await apply(database_url, [env, env], topic=topic, partition=0, first=2)  # stored next offset 4
    settings = ApiSettings(database_url=database_url, kafka_bootstrap=kafka_bootstrap, kafka_timeout_s=10)
    async for client in started(create_app(settings)):
        resp = await client.get("/v1/ops/lag", headers=auth)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["warning"] is None
    parts = {(p["group_id"], p["topic"], p["partition"]): p for p in body["partitions"]}
    assert set(parts) == {("g-test", topic, p) for p in range(3)}
    p0, p1, p2 = (parts[("g-test", topic, p)] for p in range(3))
    assert p0["stored_offset"] == 4
    assert p0["last_applied_at"] is not None
    assert (p1["stored_offset"], p2["stored_offset"], p2["end_offset"], p2["lag"]) == (None, None, 0, 0)
    assert (p0["end_offset"], p0["lag"]) == (7, 3)
    assert (p1["end_offset"], p1["lag"]) == (3, 3)
    totals = body["totals"]
    assert totals["partitions"] == 3
    assert totals["lag"] == p0["lag"] + p1["lag"]
    assert totals["stored_offset"] == 4


async def test_lag_counts_the_records_of_batched_produces(
    database_url: str, kafka_bootstrap: str, kafka_topics: KafkaTopics, auth: dict[str, str]
) -> None:
    # A burst in batches of 7, as the bridge's producer sends under load: Tansu's ListOffsets answer
    # is then the last batch's base offset + 1, not the end.
    topic = kafka_topics.readings
    truth = await harness.produce(kafka_bootstrap, topic, burst("burst-1", 300), chunk=7)
    [(partition, end)] = truth.items()
    assert end == 300
    settings = ApiSettings(database_url=database_url, kafka_bootstrap=kafka_bootstrap, kafka_timeout_s=10)
    env = envelope("d1", "water", [("water_flow", datetime(2024, 1, 1, tzinfo=UTC), 1.0, 0)])

    async def lag_of_partition() -> tuple[int, int, int]:
        async for client in started(create_app(settings)):
            resp = await client.get("/v1/ops/lag", headers=auth)
        assert resp.status_code == 200, resp.text
        assert resp.json()["warning"] is None
        [part] = [p for p in resp.json()["partitions"] if p["partition"] == partition]
        return part["stored_offset"], part["end_offset"], part["lag"]

    # The consumer has applied 250 of the 300 records: 50 to go.
    await apply(database_url, [env], topic=topic, partition=partition, first=249)
    assert await lag_of_partition() == (250, 300, 50)
    # All of them: lag 0, and the end is not below what the store has applied.
    await apply(database_url, [env] * 50, topic=topic, partition=partition, first=250)
    assert await lag_of_partition() == (300, 300, 0)
    found = await end_offsets(kafka_bootstrap, [topic], 10)
    assert found is not None
    assert found.ends == {(topic, p): 300 if p == partition else 0 for p in range(3)}


async def test_lag_without_kafka_is_answered(
    client: httpx.AsyncClient, database_url: str, auth: dict[str, str]
) -> None:
    env = envelope("d1", "water", [("water_flow", datetime(2024, 1, 1, tzinfo=UTC), 1.0, 0)])
    await apply(database_url, [env], topic="t", partition=2, first=9)
    resp = await client.get("/v1/ops/lag", headers=auth)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert "did not answer" in body["warning"]
    [part] = body["partitions"]
    assert (part["topic"], part["partition"], part["stored_offset"], part["end_offset"], part["lag"]) == (
        "t",
        2,
        10,
        None,
        None,
    )


async def test_prometheus_counts_requests_by_route(client: httpx.AsyncClient, auth: dict[str, str]) -> None:
    for _ in range(3):
        assert (await client.get("/v1/devices/nobody", headers=auth)).status_code == 404
    text = (await client.get("/metrics", headers=auth)).text
    line = 'cityingest_api_requests_total{method="GET",route="/v1/devices/{device_id}",status="404"} 3.0'
    assert line in text
    assert "cityingest_api_request_duration_seconds_bucket" in text


async def test_cityingest_api_serves_healthz(database_url: str) -> None:
    port = free_port()
    env = dict(os.environ, CITYINGEST_DATABASE_URL=database_url, CITYINGEST_API_PORT=str(port))
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "cli", "api", env=env)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            for _ in range(200):
                try:
                    resp = await client.get("/healthz")
                    break
                except httpx.TransportError:
                    await asyncio.sleep(0.1)
            else:
                pytest.fail("cityingest api did not listen within 20 s")
            assert resp.json() == {"status": "ok"}
            assert (await client.get("/readyz")).status_code == 200
    finally:
        proc.terminate()
        async with asyncio.timeout(20):
            assert await proc.wait() == 0

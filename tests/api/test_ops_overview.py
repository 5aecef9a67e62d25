"""``/v1/ops/overview`` and ``/ops`` on a real store and Kafka, with real bridge and consumer probe servers.

The components are the bridge's and the consumer's own HTTP servers and metrics, run in this process,
so the names the overview reads are the names the components export.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime

import httpx
import pytest
from aiokafka import AIOKafkaProducer
from prometheus_client import CONTENT_TYPE_LATEST

from api.app import create_app
from api.keys import create_api_key
from api.ops.config import ComponentTarget, parse_target
from api.routes.ops_dashboard import CONTENT_SECURITY_POLICY
from api.settings import ApiSettings
from consumers.metrics import ConsumerMetrics
from core.deadletter import DeadLetter, encode_dead_letter
from core.runtime import ProbeServer
from devstack.process import free_port
from ingest.metrics import BridgeStats, build_registry, render
from tests.api.conftest import apply, envelope, register, started
from tests.conftest import KafkaTopics

pytestmark = pytest.mark.integration

T0 = datetime(2024, 5, 1, tzinfo=UTC)


@dataclass
class Components:
    """A bridge and a consumer serving their real /readyz and /metrics, plus a silent server."""

    bridge: BridgeStats = field(default_factory=BridgeStats)
    consumer: ConsumerMetrics = field(default_factory=ConsumerMetrics)
    consumer_ready: bool = True
    ports: dict[str, int] = field(default_factory=dict)

    def targets(self, *extra: str) -> tuple[ComponentTarget, ...]:
        entries = [*(f"{n}=http://127.0.0.1:{p}" for n, p in self.ports.items()), *extra]
        return tuple(parse_target(e) for e in entries)


async def _never_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    # Holds the connection until the client gives up: a process that accepts but hangs.
    await reader.read()
    writer.close()


@pytest.fixture
async def components() -> AsyncIterator[Components]:
    comps = Components()
    registry = build_registry(comps.bridge, lambda: 0, lambda: True)
    bridge = ProbeServer(
        "bridge",
        "127.0.0.1",
        0,
        metrics=lambda: (render(registry), "text/plain; version=0.0.4; charset=utf-8"),
        not_ready_reasons=lambda: [],
        healthy=lambda: True,
    )
    consumer = ProbeServer(
        "consumer",
        "127.0.0.1",
        0,
        metrics=lambda: (comps.consumer.render(), CONTENT_TYPE_LATEST),
        not_ready_reasons=lambda: [] if comps.consumer_ready else ["store: down"],
        healthy=lambda: True,
    )
    silent = await asyncio.start_server(_never_answer, "127.0.0.1", 0)
    await bridge.start()
    await consumer.start()
    comps.ports = {
        "bridge-1": bridge.port,
        "consumer-1": consumer.port,
        "hung": int(silent.sockets[0].getsockname()[1]),
    }
    try:
        yield comps
    finally:
        silent.close()
        await bridge.stop()
        await consumer.stop()


async def produce(bootstrap: str, topic: str, values: list[bytes]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=False, acks="all")
    await producer.start()
    try:
        for value in values:
            # One record per batch: Tansu reports the last batch's base offset + 1 as the end.
            await producer.send_and_wait(topic, value, partition=0)
    finally:
        await producer.stop()


def dead_letter(reason: str, raw: bytes, i: int) -> bytes:
    dl = DeadLetter(
        reason=reason,
        message=f"rejected: {reason}",
        source="mqtt",
        origin=f"city/water/dev-{i}/telemetry",
        raw=raw,
        received_us=int(T0.timestamp() * 1_000_000) + i * 1_000_000,
        component_id="bridge-1",
        device_id=f"dev-{i}",
    )
    return encode_dead_letter(dl)


async def test_overview_needs_the_ops_read_key(client: httpx.AsyncClient, database_url: str) -> None:
    anonymous = await client.get("/v1/ops/overview")
    assert anonymous.status_code == 401
    assert anonymous.headers["content-type"] == "application/problem+json"
    reader = await create_api_key(database_url, "reader", ["metrics:read"])
    denied = await client.get("/v1/ops/overview", headers={"Authorization": f"Bearer {reader}"})
    assert denied.status_code == 403
    assert "ops:read" in denied.json()["detail"]


async def test_overview_of_every_part(
    database_url: str,
    kafka_bootstrap: str,
    kafka_topics: KafkaTopics,
    components: Components,
    auth: dict[str, str],
) -> None:
    components.bridge.rejected.update({"invalid_json": 4, "unknown_metric": 1})
    components.consumer.dead_letters.labels("undecodable_record").inc(2)
    components.consumer_ready = False
    dead_port = free_port()  # nothing listens there
    evil = b'<img src=x onerror="alert(1)"><script>alert(2)</script>'
    records = [dead_letter("invalid_json", f"{{bad {i}".encode(), i) for i in range(8)]
    records += [dead_letter("invalid_json", evil, 8), dead_letter("not_utf8", b"\xff\xfe{}", 9)]
    records.append(b"not a dead letter at all")
    await produce(kafka_bootstrap, kafka_topics.dlq, records)
    await produce(kafka_bootstrap, kafka_topics.readings, [b"r"] * 4)
    env = envelope("d1", "water", [("water_flow", T0, 1.0, 0)])
    await apply(database_url, [env, env], topic=kafka_topics.readings, partition=0, first=0)
    settings = ApiSettings(
        database_url=database_url,
        kafka_bootstrap=kafka_bootstrap,
        kafka_timeout_s=10,
        readings_topic=kafka_topics.readings,
        dlq_topic=kafka_topics.dlq,
        ops_components=components.targets(f"dead=http://127.0.0.1:{dead_port}"),
        ops_timeout_s=0.5,
    )
    async for client in started(create_app(settings)):
        started_at = time.monotonic()
        resp = await client.get("/v1/ops/overview", params={"latest": 4}, headers=auth)
        elapsed = time.monotonic() - started_at
        lag = (await client.get("/v1/ops/lag", headers=auth)).json()
    assert resp.status_code == 200, resp.text
    body = resp.json()
    # The hung component costs its timeout, not the whole request's worth of waiting.
    assert elapsed < 5, elapsed

    health = {h["name"]: h for h in body["health"]}
    assert list(health) == ["api", "database", "kafka", "bridge-1", "consumer-1", "hung", "dead"]
    assert {n: h["state"] for n, h in health.items()} == {
        "api": "up",
        "database": "up",
        "kafka": "up",
        "bridge-1": "up",
        "consumer-1": "degraded",
        "hung": "down",
        "dead": "down",
    }
    assert (health["bridge-1"]["kind"], health["consumer-1"]["kind"]) == ("bridge", "consumer")
    assert "/readyz answered 503: store: down" in health["consumer-1"]["detail"]
    assert health["hung"]["detail"] == "no answer within 0.5 s"
    assert health["dead"]["detail"].startswith("cannot connect: ")
    assert health["dead"]["url"] == f"http://127.0.0.1:{dead_port}/readyz"

    # The lag is the lag view's, and Kafka's end offsets count as records in.
    assert body["lag"] == lag
    assert body["lag"]["totals"]["stored_offset"] == 2
    throughput = body["throughput"]
    assert throughput["window_s"] is None  # this process's first sample
    assert throughput["kafka_records_in"] == {"total": 4, "per_s": None}
    assert throughput["kafka_records_applied"]["total"] == 2
    assert throughput["dead_letters"]["total"] == 2  # the consumer's; the bridge wrote none itself

    dead = body["dead_letters"]
    assert dead["by_reason"] == [
        {"reason": "invalid_json", "count": 4},
        {"reason": "undecodable_record", "count": 2},
        {"reason": "unknown_metric", "count": 1},
    ]
    assert dead["counted_total"] == 7
    assert dead["in_topic"] == len(records)
    assert dead["warning"] is None
    latest = dead["latest"]
    assert [d["offset"] for d in latest] == [10, 9, 8, 7]
    undecodable, binary, html, _ = latest
    assert (undecodable["reason"], undecodable["source"]) == ("undecodable", "kafka")
    assert undecodable["origin"] == f"{kafka_topics.dlq}/0/10"
    assert undecodable["excerpt"] == "not a dead letter at all"
    assert (binary["reason"], binary["excerpt"], binary["payload_bytes"]) == ("not_utf8", "\ufffd\ufffd{}", 4)
    assert html["excerpt"] == evil.decode()  # as text; the page never parses it as HTML
    assert (html["device_id"], html["component_id"]) == ("dev-8", "bridge-1")
    assert html["received_at"] == "2024-05-01T00:00:08Z"


async def test_rates_between_two_polls(
    database_url: str,
    kafka_bootstrap: str,
    kafka_topics: KafkaTopics,
    components: Components,
    auth: dict[str, str],
) -> None:
    settings = ApiSettings(
        database_url=database_url,
        kafka_bootstrap=kafka_bootstrap,
        kafka_timeout_s=10,
        readings_topic=kafka_topics.readings,
        dlq_topic=kafka_topics.dlq,
        ops_components=components.targets(),
        ops_timeout_s=0.5,
    )
    async for client in started(create_app(settings)):
        first = (await client.get("/v1/ops/overview", headers=auth)).json()["throughput"]
        components.bridge.readings_forwarded += 50
        components.bridge.messages_received += 10
        components.consumer.readings.inc(40)
        components.consumer.stored.inc(30)
        await produce(kafka_bootstrap, kafka_topics.readings, [b"r"] * 6)
        await asyncio.sleep(0.2)
        second = (await client.get("/v1/ops/overview", headers=auth)).json()["throughput"]
    assert first["window_s"] is None
    assert first["ingest_readings"] == {"total": 0, "per_s": None}
    window = second["window_s"]
    assert 0.2 <= window < 10
    for name, grown in [
        ("ingest_readings", 50),
        ("ingest_messages", 10),
        ("consume_readings", 40),
        ("stored_readings", 30),
        ("kafka_records_in", 6),
        ("kafka_records_applied", 0),
    ]:
        assert second[name]["per_s"] == pytest.approx(grown / window), name
    assert second["ingest_readings"]["total"] == 50


async def test_unregistered_devices_newest_first(
    client: httpx.AsyncClient, database_url: str, auth: dict[str, str]
) -> None:
    for i, device in enumerate(["u-old", "u-mid", "u-new", "registered"]):
        ts = T0.replace(hour=i)
        await apply(database_url, [envelope(device, "water", [("water_flow", ts, 1.0, 0)])], first=i)
    await register(client, auth, "registered", domain="water")
    resp = await client.get("/v1/ops/overview", params={"latest": 2}, headers=auth)
    assert resp.status_code == 200, resp.text
    unregistered = resp.json()["unregistered"]
    assert unregistered["count"] == 3
    assert [d["device_id"] for d in unregistered["latest"]] == ["u-new", "u-mid"]
    assert unregistered["latest"][0]["first_seen"] == "2024-05-01T02:00:00Z"


async def test_overview_without_kafka_or_components_still_answers(
    client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    started_at = time.monotonic()
    resp = await client.get("/v1/ops/overview", headers=auth)
    assert time.monotonic() - started_at < 5
    assert resp.status_code == 200, resp.text
    body = resp.json()
    health = {h["name"]: h["state"] for h in body["health"]}
    assert health == {"api": "up", "database": "up", "kafka": "down"}
    assert "did not answer" in body["lag"]["warning"]
    dead = body["dead_letters"]
    assert (dead["in_topic"], dead["latest"], dead["by_reason"]) == (None, [], [])
    assert "CITYINGEST_OPS_COMPONENTS" in dead["warning"]
    assert "Kafka did not answer" in dead["warning"]
    assert body["throughput"]["kafka_records_in"] == {"total": None, "per_s": None}


async def test_dashboard_page_is_self_contained(client: httpx.AsyncClient) -> None:
    page = await client.get("/ops")
    assert page.status_code == 200
    assert page.headers["content-type"] == "text/html; charset=utf-8"
    assert page.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    assert "default-src 'none'" in CONTENT_SECURITY_POLICY
    assert "'unsafe-inline'" not in CONTENT_SECURITY_POLICY
    html = page.text
    # Only same-origin assets, no inline script or style, nothing fetched from elsewhere.
    assert sorted(re.findall(r'(?:src|href)="([^"]+)"', html)) == [
        "/ops/assets/ops.css",
        "/ops/assets/ops.js",
        "data:,",
    ]
    assert "<script>" not in html
    assert "<style" not in html
    assert " style=" not in html
    for name, media in [("ops.js", "text/javascript"), ("ops.css", "text/css")]:
        asset = await client.get(f"/ops/assets/{name}")
        assert asset.status_code == 200
        assert asset.headers["content-type"].startswith(media)
        assert asset.headers["x-content-type-options"] == "nosniff"
        assert not re.search(r"https?://(?!www\.w3\.org/2000/svg)", asset.text), name
    script = (await client.get("/ops/assets/ops.js")).text
    assert "innerHTML" not in script
    assert "sessionStorage" in script
    missing = await client.get("/ops/assets/../settings.py")
    assert missing.status_code == 404
    assert (await client.get("/ops/assets/other.js")).status_code == 404


async def test_overview_is_documented(client: httpx.AsyncClient) -> None:
    schema = (await client.get("/openapi.json")).json()
    get = schema["paths"]["/v1/ops/overview"]["get"]
    ref = get["responses"]["200"]["content"]["application/json"]["schema"]["$ref"]
    assert ref == "#/components/schemas/Overview"
    assert {p["name"] for p in get["parameters"]} == {"latest"}
    assert get["security"]
    overview = schema["components"]["schemas"]["Overview"]["properties"]
    assert set(overview) == {"generated_at", "health", "lag", "throughput", "dead_letters", "unregistered"}
    assert "text/html" in schema["paths"]["/ops"]["get"]["responses"]["200"]["content"]

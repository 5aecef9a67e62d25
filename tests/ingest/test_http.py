"""The bridge's /metrics, /healthz and /readyz (a core.runtime.ProbeServer) and its Prometheus metrics."""

from __future__ import annotations

import asyncio

import httpx

from core.runtime import ProbeServer
from ingest.metrics import CONTENT_TYPE, BridgeStats, build_registry, render


async def test_endpoints_report_health_readiness_and_metrics() -> None:
    stats = BridgeStats(messages_received=7, readings_forwarded=40, kafka_errors=2, mqtt_reconnects=1)
    stats.rejected["unknown_metric"] += 3
    reasons: list[str] = []
    registry = build_registry(stats, lambda: 5, lambda: not reasons)
    server = ProbeServer(
        "bridge",
        "127.0.0.1",
        0,
        metrics=lambda: (render(registry), CONTENT_TYPE),
        not_ready_reasons=lambda: reasons,
        healthy=lambda: True,
    )
    await server.start()
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}") as http:
            metrics = await http.get("/metrics")
            assert metrics.status_code == 200
            assert metrics.headers["content-type"].startswith("text/plain")
            for line in [
                "cityingest_bridge_messages_received_total 7.0",
                "cityingest_bridge_readings_forwarded_total 40.0",
                'cityingest_bridge_rejected_total{reason="unknown_metric"} 3.0',
                "cityingest_bridge_messages_in_flight 5.0",
                "cityingest_bridge_kafka_errors_total 2.0",
                "cityingest_bridge_mqtt_reconnects_total 1.0",
                "cityingest_bridge_ready 1.0",
            ]:
                assert line in metrics.text
            assert (await http.get("/healthz")).json() == {"status": "ok"}
            ready = await http.get("/readyz")
            assert (ready.status_code, ready.json()) == (200, {"status": "ready", "reasons": []})

            reasons.append("kafka: unreachable")
            ready = await http.get("/readyz?verbose=1")
            assert ready.status_code == 503
            assert ready.json() == {"status": "not ready", "reasons": ["kafka: unreachable"]}
            assert "cityingest_bridge_ready 0.0" in (await http.get("/metrics")).text

            assert (await http.get("/other")).status_code == 404
            assert (await http.post("/readyz")).status_code == 405
            head = await http.head("/healthz")
            assert (head.status_code, head.content) == (200, b"")
    finally:
        await server.stop()
        await server.stop()  # idempotent


async def test_healthz_fails_when_the_bridge_died() -> None:
    alive = [True]
    server = ProbeServer(
        "bridge",
        "127.0.0.1",
        0,
        metrics=lambda: (b"", CONTENT_TYPE),
        not_ready_reasons=list,
        healthy=lambda: alive[0],
    )
    await server.start()
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}") as http:
            assert (await http.get("/healthz")).status_code == 200
            alive[0] = False
            failed = await http.get("/healthz")
            assert (failed.status_code, failed.json()) == (503, {"status": "failed"})
    finally:
        await server.stop()


async def test_garbage_and_silent_clients_do_not_hurt_the_server() -> None:
    server = ProbeServer(
        "bridge",
        "127.0.0.1",
        0,
        metrics=lambda: (b"", CONTENT_TYPE),
        not_ready_reasons=list,
        healthy=lambda: True,
    )
    await server.start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"\x16\x03\x01garbage\r\n\r\n")
        await writer.drain()
        assert await reader.read() == b""  # closed without an answer
        writer.close()
        await writer.wait_closed()
        _, silent = await asyncio.open_connection("127.0.0.1", server.port)
        async with httpx.AsyncClient() as http:
            assert (await http.get(f"http://127.0.0.1:{server.port}/healthz")).status_code == 200
        silent.close()
        await silent.wait_closed()
    finally:
        await server.stop()

"""core.runtime: the probe server every component serves, and the one backoff."""

from __future__ import annotations

import asyncio
import json

import pytest

from core.runtime import Backoff, ProbeServer


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_backoff_doubles_to_its_cap_and_resets() -> None:
    backoff = Backoff(0.5, 4.0, clock=Clock())
    assert [backoff.delay() for _ in range(6)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    assert backoff.failures == 6
    backoff.reset()
    assert backoff.delay() == 0.5


def test_backoff_starts_over_after_a_healthy_period() -> None:
    clock = Clock()
    backoff = Backoff(1.0, 10.0, healthy_after_s=60.0, clock=clock)
    delays = []
    for _ in range(5):  # five crashes, each one second after its restart: grows to the ceiling
        clock.now += 1.0
        delay = backoff.delay()
        delays.append(delay)
        clock.now += delay
        backoff.started()
    assert delays == [1.0, 2.0, 4.0, 8.0, 10.0]
    clock.now += 59.0
    assert backoff.delay() == 10.0  # died again within the healthy period: stays slow
    clock.now += 10.0
    backoff.started()
    clock.now += 60.0
    assert backoff.delay() == 1.0  # ran healthy for the period since its restart: as new
    assert backoff.failures == 1


def test_backoff_counts_healthy_time_from_the_end_of_the_delay_by_default() -> None:
    clock = Clock()
    backoff = Backoff(1.0, 10.0, healthy_after_s=5.0, clock=clock)
    assert backoff.delay() == 1.0
    clock.now += 5.5  # the attempt after the delay began at 1.0, only 4.5 s ago
    assert backoff.delay() == 2.0
    clock.now += 7.0
    assert backoff.delay() == 1.0


@pytest.mark.parametrize(("initial", "maximum"), [(0.0, 1.0), (2.0, 1.0), (-1.0, 1.0)])
def test_backoff_refuses_nonsense(initial: float, maximum: float) -> None:
    with pytest.raises(ValueError, match="backoff"):
        Backoff(initial, maximum)


async def _get(port: int, request: bytes) -> tuple[int, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    await writer.drain()
    data = await reader.read()
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


async def test_probe_server_answers_health_readiness_and_metrics() -> None:
    reasons: list[str] = []
    healthy = [True]
    server = ProbeServer(
        "test",
        "127.0.0.1",
        0,
        metrics=lambda: (b"x_total 1\n", "text/plain; version=0.0.4"),
        not_ready_reasons=lambda: list(reasons),
        healthy=lambda: healthy[0],
    )
    await server.start()
    try:
        port = server.port
        assert await _get(port, b"GET /healthz HTTP/1.1\r\n\r\n") == (200, b'{"status":"ok"}')
        assert await _get(port, b"GET /metrics HTTP/1.1\r\n\r\n") == (200, b"x_total 1\n")
        status, body = await _get(port, b"GET /readyz HTTP/1.1\r\n\r\n")
        assert (status, json.loads(body)) == (200, {"status": "ready", "reasons": []})
        reasons.append('kafka: "unreachable"')
        healthy[0] = False
        status, body = await _get(port, b"GET /readyz?x=1 HTTP/1.1\r\n\r\n")
        assert (status, json.loads(body)) == (
            503,
            {"status": "not ready", "reasons": ['kafka: "unreachable"']},
        )
        assert (await _get(port, b"GET /healthz HTTP/1.1\r\n\r\n"))[0] == 503
        assert (await _get(port, b"POST /readyz HTTP/1.1\r\n\r\n"))[0] == 405
        assert (await _get(port, b"GET /nope HTTP/1.1\r\n\r\n"))[0] == 404
        assert await _get(port, b"HEAD /healthz HTTP/1.1\r\n\r\n") == (503, b"")
    finally:
        await server.stop()
        await server.stop()

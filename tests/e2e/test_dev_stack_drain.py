"""``cityingest dev`` must not discard Tansu (memory only) before the consumer applied everything in it.

The bursts go to the plain anonymous listener of ``--insecure-mqtt``: these tests are about the drain,
not about devices' credentials (tests/e2e/test_dev_stack_security.py).

Small consumer batches (``CITYINGEST_BATCH_MAX_RECORDS=7``) keep a backlog in Kafka after a burst the
bridge forwarded in batches, the case where Tansu's reported end offsets fall short of the real ones.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest

from tests.e2e.test_dev_stack import DevRun, _processes_mentioning, _wait_count, state_dir

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(420)]

__all__ = ["state_dir"]  # the fixture, shared with test_dev_stack

READINGS = 3000
DEVICE = "e2e-burst-1"
ROTATION = "rotating it"
COUNT = "SELECT count(*) FROM readings WHERE device_id = $1"
SETTLE_S = 120
"""How long the pipeline gets to apply what it still holds (Mosquitto's queue for the bridge included)."""


def publish_burst(mqtt_port: int, device: str, n: int) -> dict[datetime, float]:
    """Publish ``n`` readings of ``device`` at QoS 1 in one session; return them once all are acknowledged."""
    first = datetime(2026, 11, 1, tzinfo=UTC)
    sent = {first + timedelta(seconds=i): i + 0.5 for i in range(n)}
    lines = [
        f'{{"metric": "water_flow", "value": {v}, "ts": "{ts:%Y-%m-%dT%H:%M:%SZ}"}}' for ts, v in sent.items()
    ]
    # mosquitto_pub -l at QoS 1 exits 0 after the PUBACK of every line (fewer than 65,535 lines).
    pub = subprocess.run(
        ["mosquitto_pub", "-p", str(mqtt_port), "-q", "1", "-t", f"city/water/{device}/telemetry", "-l"],
        input="\n".join(lines) + "\n",
        text=True,
        capture_output=True,
        check=False,
        timeout=120,
    )
    assert pub.returncode == 0, pub.stderr
    return sent


async def stored_readings(dsn: str, device: str) -> list[tuple[datetime, float]]:
    """Every stored reading of ``device`` (a reading stored twice appears twice)."""
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch("SELECT ts, value FROM readings WHERE device_id = $1 ORDER BY ts", device)
    finally:
        await conn.close()
    return [(r["ts"], r["value"]) for r in rows]


def assert_stored_once(dsn: str, sent: dict[datetime, float]) -> None:
    """Every acknowledged reading is in the store exactly once, with its value (once the store has as
    many as were sent, or after SETTLE_S)."""
    _wait_count(dsn, COUNT, len(sent), SETTLE_S, DEVICE)
    stored = asyncio.run(stored_readings(dsn, DEVICE))
    missing = len(set(sent) - {ts for ts, _ in stored})
    assert (len(stored), missing) == (len(sent), 0), f"{missing} of {len(sent)} acknowledged readings lost"
    assert stored == sorted(sent.items())


def test_sigint_right_after_a_burst_loses_nothing(state_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CITYINGEST_BATCH_MAX_RECORDS", "7")
    run = DevRun(state_dir, "--no-simulator", "--insecure-mqtt")
    run.wait_running()
    sent = publish_burst(run.ports["mqtt-plain"], DEVICE, READINGS)
    assert run.stop(signal.SIGINT) == 0, run.text()
    assert "the store has not applied" not in run.text(), run.text()  # the drain finished

    # The next run starts on the same store: everything acknowledged before the Ctrl-C is there, once
    # (what the bridge had not taken yet waited in Mosquitto's persistent session and follows now).
    second = DevRun(state_dir, "--no-simulator", "--insecure-mqtt")
    second.wait_running()
    try:
        assert_stored_once(second.dsn, sent)
    finally:
        assert second.stop(signal.SIGTERM) == 0, second.text()
    assert _processes_mentioning(str(state_dir)) == []


def test_tansu_rotation_during_a_burst_loses_nothing(
    state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CITYINGEST_BATCH_MAX_RECORDS", "7")
    # Tansu always holds more than 1 MiB: the stack drains and replaces it at every check.
    run = DevRun(
        state_dir,
        "--no-simulator",
        "--insecure-mqtt",
        "--kafka-max-rss-mb",
        "1",
        "--kafka-check-interval-s",
        "1",
    )
    run.wait_running()
    try:
        sent = publish_burst(run.ports["mqtt-plain"], DEVICE, READINGS)
        # Two more rotations after every reading was acknowledged: the first may have begun before the
        # bridge forwarded the last ones; by the second the whole burst went through one.
        rotations = run.text().count(ROTATION)
        deadline = time.monotonic() + 180
        while run.text().count(ROTATION) < rotations + 2 and time.monotonic() < deadline:
            assert run.proc.poll() is None, run.text()
            time.sleep(0.5)
        assert run.text().count(ROTATION) >= rotations + 2, run.text()
        # Still running; a rotation that had discarded records would leave them missing for good.
        assert_stored_once(run.dsn, sent)
    finally:
        assert run.stop(signal.SIGINT) == 0, run.text()
    assert _processes_mentioning(str(state_dir)) == []

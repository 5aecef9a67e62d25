"""``cityingest dev`` from a cold start: every real service, data end to end, clean stop, data reused."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from devstack.process import free_port
from simulator.settings import DEFAULT_DISTRICTS
from tests.secured_broker import attempt

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(420)]

STARTUP_LIMIT_S = 180
COUNT_SQL_BY_DEVICE = "SELECT count(*) FROM readings WHERE device_id = $1"


class DevRun:
    """One ``cityingest dev`` process with its ports and output."""

    started: list[DevRun] = []  # noqa: RUF012 - every run of the session, for the fixture's clean-up

    def __init__(self, state_dir: Path, *extra: str, ports: dict[str, int] | None = None) -> None:
        self.state_dir = state_dir
        names = ("api", "mqtt", "mqtt-cert", "mqtt-plain", "kafka", "pg")
        self.ports = ports or {name: free_port() for name in names}
        self.output = state_dir.parent / f"dev-{time.monotonic_ns()}.out"
        argv = [sys.executable, "-m", "cli", "dev", "--state-dir", str(state_dir)]
        for name, port in self.ports.items():
            argv += [f"--{name}-port", str(port)]
        argv += list(extra)
        with open(self.output, "wb") as out:
            self.proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        DevRun.started.append(self)

    def text(self) -> str:
        return self.output.read_text(errors="replace")

    def wait_running(self) -> float:
        """Seconds until the stack says it runs; fails with its output if it exits or takes too long."""
        started = time.monotonic()
        while time.monotonic() - started < STARTUP_LIMIT_S:
            if "cityingest dev is running" in self.text():
                return time.monotonic() - started
            if self.proc.poll() is not None:
                pytest.fail(f"cityingest dev exited with {self.proc.returncode}:\n{self.text()}")
            time.sleep(0.2)
        pytest.fail(f"cityingest dev did not come up within {STARTUP_LIMIT_S}s:\n{self.text()}")

    @property
    def dsn(self) -> str:
        match = re.search(r"postgresql://\S+", self.text())
        assert match, self.text()
        return match.group(0)

    def stop(self, sig: int = signal.SIGINT, within_s: float = 120) -> int:
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(within_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            pytest.fail(f"cityingest dev did not stop within {within_s}s:\n{self.text()}")


def issue_credential(api: str, key: str, device: str, domain: str = "water") -> dict[str, Any]:
    """Register ``device`` and issue it MQTT credentials through the API, as a device team would."""
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    body = json.dumps({"domain": domain}).encode()
    put = urllib.request.Request(f"{api}/v1/devices/{device}", body, headers, method="PUT")  # noqa: S310
    with urllib.request.urlopen(put, timeout=10):  # noqa: S310 - loopback test URL
        pass
    post = urllib.request.Request(f"{api}/v1/devices/{device}/credentials", b"{}", headers, method="POST")  # noqa: S310
    with urllib.request.urlopen(post, timeout=10) as response:  # noqa: S310 - loopback test URL
        assert response.status == 201
        doc: dict[str, Any] = json.load(response)
    return doc


def tls_login(run: DevRun, credential: dict[str, Any]) -> list[str]:
    """mosquitto_pub/sub options for the dev stack's TLS listener with a credential the API issued."""
    return [
        "-p",
        str(run.ports["mqtt"]),
        "--cafile",
        str(run.state_dir / "ca" / "ca.pem"),
        "-u",
        credential["username"],
        "-P",
        credential["password"],
        "-i",
        credential["client_id"],
    ]


def _processes_mentioning(needle: str) -> list[str]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if needle in cmdline or needle.encode() in environ:
            found.append(f"{entry.name}: {cmdline}")
    return found


def _listening(port: int) -> bool:
    # Connections in TIME_WAIT keep a port from being bound for a while; what matters is that nothing listens.
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def _get(url: str) -> int:
    with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 - loopback test URL
        return int(response.status)


def _get_json(url: str, headers: dict[str, str]) -> dict[str, Any]:
    request = urllib.request.Request(url, headers=headers)  # noqa: S310 - loopback test URL
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 - loopback test URL
        doc: dict[str, Any] = json.load(response)
    return doc


async def _metric_of_a_registered_device(dsn: str) -> str:
    conn = await asyncpg.connect(dsn)
    try:
        return str(
            await conn.fetchval(
                "SELECT r.metric FROM readings r JOIN devices d USING (device_id)"
                " WHERE d.status = 'active' LIMIT 1"
            )
        )
    finally:
        await conn.close()


async def _count(dsn: str, sql: str, *args: object) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return int(await conn.fetchval(sql, *args))
    finally:
        await conn.close()


def _wait_count(dsn: str, sql: str, at_least: int, within_s: float, *args: object) -> int:
    deadline = time.monotonic() + within_s
    count = -1
    while time.monotonic() < deadline:
        count = asyncio.run(_count(dsn, sql, *args))
        if count >= at_least:
            return count
        time.sleep(0.5)
    return count


@pytest.fixture
def state_dir(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "state"
    yield path
    leftovers = _processes_mentioning(str(path))
    for line in leftovers:
        os.kill(int(line.split(":")[0]), signal.SIGKILL)
    # A test that failed before stopping its run leaves the process to reap here, not in the next test
    # (where an unreaped Popen's ResourceWarning would fail whatever test runs next).
    for run in [r for r in DevRun.started if r.state_dir == path]:
        if run.proc.poll() is None:
            run.proc.kill()
        run.proc.wait(timeout=30)
        DevRun.started.remove(run)


def test_dev_stack_runs_end_to_end_and_stops_cleanly(state_dir: Path) -> None:
    # Cold start: a fresh state directory, every service started from scratch.
    run = DevRun(state_dir, "--simulator-rate", "40", "--simulator-devices", "30")
    elapsed = run.wait_running()
    assert elapsed < STARTUP_LIMIT_S
    out = run.text()
    api = f"http://127.0.0.1:{run.ports['api']}"
    for endpoint in (api, f"mqtts://127.0.0.1:{run.ports['mqtt']}", f"127.0.0.1:{run.ports['kafka']}"):
        assert endpoint in out
    assert _get(f"{api}/healthz") == 200
    assert _get(f"{api}/readyz") == 200
    assert _get(f"{api}/docs") == 200
    key = re.search(r"API key\s+(\S+)", out)
    assert key, out
    auth = {"Authorization": f"Bearer {key.group(1)}"}
    request = urllib.request.Request(f"{api}/v1/devices", headers=auth)  # noqa: S310 - loopback test URL
    with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310 - loopback test URL
        assert response.status == 200
    with pytest.raises(urllib.error.HTTPError) as denied:
        _get(f"{api}/v1/devices")
    denied.value.close()
    assert denied.value.code == 401

    # The simulator's readings travel MQTT -> bridge -> Kafka -> consumer -> TimescaleDB.
    dsn = run.dsn
    assert _wait_count(dsn, "SELECT count(*) FROM readings", 50, 90) >= 50

    # The simulator registered its city through the API before publishing, all but a deliberate 5 %.
    sql = "SELECT count(*) FROM devices WHERE status = 'active' AND district IS NOT NULL"
    assert asyncio.run(_count(dsn, sql + " AND expected_interval_s > 0")) == 28  # 30 devices - 2
    # So statistics by district have real district names.
    metric = asyncio.run(_metric_of_a_registered_device(dsn))
    now = datetime.now(UTC)
    months = {"start": f"{now - timedelta(hours=1):%Y-%m}", "end": f"{now:%Y-%m}"}
    query = urllib.parse.urlencode({"metric": metric, **months, "by": "district"})
    cells = _get_json(f"{api}/v1/statistics/monthly?{query}", auth)["items"]
    districts = {c["district"] for c in cells if c["devices_reporting"] > 0}  # readings: null if suppressed
    assert districts - {None}, cells
    assert districts - {None} <= set(DEFAULT_DISTRICTS), cells

    # Readings of our own, published with QoS 1 over TLS with a credential the API issued, just before
    # the stop, must survive it.
    device = "e2e-meter-1"
    credential = issue_credential(api, key.group(1), device)
    lines = [
        f'{{"metric": "water_flow", "value": {i}.5, "ts": "2026-11-01T00:{i // 60:02d}:{i % 60:02d}Z"}}'
        for i in range(200)
    ]
    pub = subprocess.run(
        ["mosquitto_pub", *tls_login(run, credential), "-q", "1", "-t", credential["topic"], "-l"],
        input="\n".join(lines) + "\n",
        text=True,
        capture_output=True,
        check=False,
    )
    assert pub.returncode == 0, pub.stderr
    # Another device, with a valid credential of its own, publishes on e2e-meter-1's topic: the broker
    # answers "not authorized" (PUBACK 0x87), so none of it is stored as e2e-meter-1's (the count below).
    forger = issue_credential(api, key.group(1), "e2e-meter-2")
    for i in range(5):
        forged = attempt(
            run.ports["mqtt"],
            ca_file=run.state_dir / "ca" / "ca.pem",
            login=(forger["username"], forger["password"]),
            client_id=forger["client_id"],
            publish=credential["topic"],
            payload=f'{{"metric": "water_flow", "value": 9{i}.5, "ts": "2026-11-02T00:00:0{i}Z"}}'.encode(),
        )
        assert (forged.error, forged.connack, forged.puback) == (None, 0, 0x87), forged
    code = run.stop(signal.SIGINT)
    assert code == 0, run.text()
    assert "cityingest dev stopped." in run.text()
    assert _processes_mentioning(str(state_dir)) == []
    for port in run.ports.values():
        assert not _listening(port), f"something still listens on port {port} after stop"

    # A second run reuses the data of the first: nothing acknowledged was lost on the way out.
    second = DevRun(state_dir, "--no-simulator")
    second.wait_running()
    try:
        assert "simulator" not in second.text().split("cityingest dev is running")[1].split("logs")[0]
        stored = asyncio.run(_count(second.dsn, "SELECT count(*) FROM readings WHERE device_id = $1", device))
        assert stored == len(lines)  # not one of the forged readings
    finally:
        assert second.stop(signal.SIGTERM) == 0, second.text()
    assert _processes_mentioning(str(state_dir)) == []
